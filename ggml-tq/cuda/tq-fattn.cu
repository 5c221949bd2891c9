// Flash-attention decode over TQ K/V caches (any pair of TQ types, or q8_0 keys with TQ values): which kernel
// runs, as ggml-cuda's fattn.cu chooses among its own. Both kernels score on the tensor cores and sum V in the
// rotated domain (tq-fattn-common.cuh):
//   - tq-fattn-mma-i8.cuh: S on the int8 tensor cores, about half the instructions per key; head 128/256, the
//     cache's own layout (a token's heads side by side), from TQ_FA_I8_MIN_KV keys on; TQ or q8_0 keys, TQ values,
//     but neither of them TQ6_0 (its 64 centroids do not fit the kernel's byte-permute tables);
//   - tq-fattn-mma-f16.cuh: codebook values (or q8_0's integers) as f16 mma fragments; any layout, head 64/128/256.
#include "tq-fattn.cuh"
#include "tq-fattn-mma-f16.cuh"
#include "tq-fattn-mma-i8.cuh"

#include <map>
#include <mutex>
#include <tuple>

#define TQ_FA_MAX_Q 8 // query rows (tokens) the decode kernels take; more go to the f16 conversion path

// Below this many keys the int8 kernel's fixed cost (the query's int8 rounding, the copy ring) outweighs what it
// saves per key: at 256 keys it decoded slower than the f16 kernel, at 768 faster.
#define TQ_FA_I8_MIN_KV 512

bool ggml_cuda_flash_attn_ext_tq_supported(int device, const ggml_tensor * dst) {
    if (!ampere_mma_available(ggml_cuda_info().devices[device].cc)) {
        return false; // m16n8k16 f16 mma: NVIDIA Ampere and newer
    }
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t D = K->ne[0];
    return tq_fa_key_type(K->type) && ggml_tq_cuda_is_tq_type(V->type) && Q->type == GGML_TYPE_F32 &&
        (D == 64 || D == 128 || D == 256) && V->ne[0] == D && Q->ne[0] == D &&
        Q->ne[1] <= TQ_FA_MAX_Q && Q->ne[2] % K->ne[2] == 0 && K->ne[2] == V->ne[2] &&
        (mask == nullptr || (mask->type == GGML_TYPE_F16 && mask->ne[2] == 1)) &&
        K->nb[0] == ggml_type_size(K->type) && V->nb[0] == ggml_type_size(V->type) && Q->nb[0] == sizeof(float);
}

// The int8 kernel where it takes the node; false where it did not run. GGML_TQ_FA_I8=0 turns it off (the f16
// kernel then runs everything), for comparisons.
static bool tq_fa_try_i8(ggml_backend_cuda_context & ctx, ggml_tensor * dst, const tq_fa_params & pn) {
    static const bool enabled = [] {
        const char * e = getenv("GGML_TQ_FA_I8");
        return !e || atoi(e) != 0;
    }();
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const int D = (int) K->ne[0];
    if (!enabled || !tq_fa_i8_types(K->type, V->type) || (D != 128 && D != 256) || pn.n_kv < TQ_FA_I8_MIN_KV) {
        return false;
    }
    tq_fa_i8_params p = {};
    static_cast<tq_fa_params &>(p) = pn;
    if (!tq_fa_i8_layout(p, D, K->type, V->type)) {
        return false;
    }
    const tq_fa_i8_kernel_t k = tq_fa_i8_select(D, K->type, V->type);
    // blocks an SM holds at once, per device, kernel and shared-memory size (the occupancy query once each;
    // backends of several GPUs may run on several threads)
    static std::mutex occupancy_mutex;
    static std::map<std::tuple<int, const void *, int>, int> occupancy_seen;
    int blocks_per_sm;
    {
        std::lock_guard<std::mutex> lock(occupancy_mutex);
        const auto key = std::make_tuple(ctx.device, (const void *) k, p.smem);
        auto it = occupancy_seen.find(key);
        if (it == occupancy_seen.end()) {
            it = occupancy_seen.emplace(key, tq_fa_i8_blocks_per_sm(k, p)).first;
        }
        blocks_per_sm = it->second;
    }
    tq_fa_i8_plan(p, blocks_per_sm, ggml_cuda_info().devices[ctx.device].nsm);
    ggml_cuda_pool_alloc<float>  parts(ctx.pool());
    ggml_cuda_pool_alloc<float2> meta(ctx.pool());
    if (p.n_blocks > 1) {
        p.parts = parts.alloc(tq_fa_part_rows(p, p.n_blocks)*D);
        p.meta  = meta.alloc(tq_fa_part_rows(p, p.n_blocks));
    }
    tq_fa_i8_launch(p, k, D, ctx.stream());
    return true;
}

static void tq_fa_run_f16(ggml_backend_cuda_context & ctx, ggml_tensor * dst, const tq_fa_params & pn) {
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const int D = (int) K->ne[0];
    tq_fa_f16_params p = {};
    static_cast<tq_fa_params &>(p) = pn;
    tq_fa_f16_plan(p, ggml_cuda_info().devices[ctx.device].nsm);
    ggml_cuda_pool_alloc<float>  parts(ctx.pool(), tq_fa_part_rows(p, p.n_split)*D);
    ggml_cuda_pool_alloc<float2> meta(ctx.pool(), tq_fa_part_rows(p, p.n_split));
    p.parts = parts.get();
    p.meta  = meta.get();
    tq_fa_f16_launch(p, D, K->type, V->type, ctx.stream());
}

void ggml_cuda_flash_attn_ext_tq(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];
    GGML_ASSERT(ggml_cuda_flash_attn_ext_tq_supported(ctx.device, dst));
    GGML_ASSERT(!sinks || sinks->type == GGML_TYPE_F32);

    tq_fa_params p = {};
    p.Q = (const char *) Q->data; p.K = (const char *) K->data; p.V = (const char *) V->data;
    p.mask  = mask ? (const char *) mask->data : nullptr;
    p.sinks = sinks ? (const float *) sinks->data : nullptr;
    p.dst   = (float *) dst->data;
    memcpy(&p.scale,         (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&p.max_bias,      (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&p.logit_softcap, (const float *) dst->op_params + 2, sizeof(float));
    p.n_head      = (int) Q->ne[2];
    p.n_head_log2 = 1u << (uint32_t) floorf(log2f((float) p.n_head));
    p.m0 = powf(2.0f, -(p.max_bias       ) / p.n_head_log2);
    p.m1 = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);
    p.n_q       = (int) Q->ne[1];
    p.n_seq     = (int) Q->ne[3];
    p.n_kv      = (int) K->ne[1];
    p.n_head_kv = (int) K->ne[2];
    p.gqa       = p.n_head / p.n_head_kv;
    p.G = std::min(p.gqa, TQ_FA_MAX_G);
    while (p.gqa % p.G != 0) {
        p.G--;
    }
    p.n_groups = p.gqa / p.G;
    p.nbq1 = Q->nb[1]; p.nbq2 = Q->nb[2]; p.nbq3 = Q->nb[3];
    p.nbk1 = K->nb[1]; p.nbk2 = K->nb[2]; p.nbk3 = K->nb[3];
    p.nbv1 = V->nb[1]; p.nbv2 = V->nb[2]; p.nbv3 = V->nb[3];
    p.nbm1 = mask ? mask->nb[1] : 0; p.nbm3 = mask ? mask->nb[3] : 0; p.mask_ne3 = mask ? (int) mask->ne[3] : 1;

    if (!tq_fa_try_i8(ctx, dst, p)) {
        tq_fa_run_f16(ctx, dst, p);
    }
}
