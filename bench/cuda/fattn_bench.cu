// The int8-scoring decode attention kernel (ggml-tq/cuda/tq-fattn-mma-i8.cuh, the one ggml-cuda runs for TQ K/V
// at head 128/256) with its merge, alone, without ggml: checks it against the same int8 arithmetic in
// doubles (int8_reference) and reports its distance to exact attention over K/V dequantized by the C reference
// (tq-ref.c); times it with CUDA events at the contexts of dev/gpu/cuda_device.sh. Built and run on the GPU
// machine by `dev/gpu/cuda_device.sh fabench`: nvcc alone, a minute instead of a llama.cpp build (what it
// measured: docs/cuda.md). Cases the kernel does not take (other types, head 64, layouts) are counted, not run:
// ggml-cuda gives those to tq-fattn-mma-f16.cuh. common.cuh beside this file stands in for ggml-cuda's (its
// early launch included).
//
//   fattn_bench check              correctness over head sizes, type pairs, GQA ratios, query rows, odd lengths
//   fattn_bench time [minb ...]    kernel time at 256, 8192, 32768 and 65536 keys, Llama-3-8B attention shape
//                                  or the shapes of FAB_SHAPES ("kv_heads:gqa:head" words, such as "4:7:128"),
//                                  K/V read from memory (cold) and from one copy launched back to back (hot);
//                                  K/V tq4_0, tq3_0, and tq4_0/tqv2_0 (K/V)
//   fattn_bench once T n_kv minb   five launches of one shape, for ncu (dev/gpu/cuda_device.sh faprof); T a type
//                                  for K and V or K/V (tq4_0/tqv2_0)
// -DFAB_ALL_MINB=1 builds the kernel for 2, 3 and 4 blocks per SM (check and time then run all three);
// without it, only what ggml-cuda builds (TQ_FA_I8_MINB)
#include "tq-fattn-mma-i8.cuh"

#include <vector>

#ifdef FAB_ALL_MINB
static const std::vector<int> all_minb = {2, 3, 4};
#else
static const std::vector<int> all_minb = {TQ_FA_I8_MINB};
#endif

static tq_fa_i8_kernel_t select_kernel(int D, ggml_type tk, ggml_type tv, int minb) {
#ifdef FAB_ALL_MINB
    if (minb == 2) return tq_fa_i8_select<2>(D, tk, tv);
    if (minb == 4) return tq_fa_i8_select<4>(D, tk, tv);
#endif
    (void) minb;
    return tq_fa_i8_select(D, tk, tv);
}

// max |gpu - ref| / rms(ref) allowed against int8_reference, the kernel's own arithmetic in doubles: what is
// left is its f16 P and ex2.approx
#define TQ_FA_CHECK_TOL 5e-3

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

struct fa_case {
    int D; ggml_type tk, tv; int n_kv, n_head_kv, gqa, n_q; bool mask; float softcap; bool sinks;
};

static size_t block_bytes(ggml_type t) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  return sizeof(block_tq4_0);
        case GGML_TYPE_TQ3_0:  return sizeof(block_tq3_0);
        case GGML_TYPE_TQV2_0: return sizeof(block_tqv2_0);
        default: abort();
    }
}

static void dequant_row(ggml_type t, const void * x, float * y, int D) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  dequantize_row_tq4_0_ref ((const block_tq4_0  *) x, y, D); break;
        case GGML_TYPE_TQ3_0:  dequantize_row_tq3_0_ref ((const block_tq3_0  *) x, y, D); break;
        case GGML_TYPE_TQV2_0: dequantize_row_tqv2_0_ref((const block_tqv2_0 *) x, y, D); break;
        default: abort();
    }
}

struct fa_data {
    fa_case c;
    size_t rowK, rowV;                       // bytes of one head's row
    std::vector<uint8_t> K, V;               // [n_kv][n_head_kv] rows: a token's heads side by side (llama.cpp's cache)
    std::vector<float> Q;                    // [n_q][n_head][D]
    std::vector<uint16_t> mask;              // [n_q][n_kv] f16
    std::vector<float> sinks;
    char *dK = nullptr, *dV = nullptr, *dQ = nullptr, *dM = nullptr;
    float *dS = nullptr, *dO = nullptr, *dP = nullptr;
    float2 *dMeta = nullptr;
    tq_fa_i8_params p = {};
    tq_fa_i8_kernel_t k = nullptr;
};

static uint16_t f2h(float f) { __half h = __float2half(f); uint16_t u; memcpy(&u, &h, 2); return u; }
static float h2f(uint16_t u) { __half h; memcpy(&h, &u, 2); return __half2float(h); }

// Random but valid blocks: random indices, scales around 1/sqrt(D) times a per-token spread
static void fill_blocks(std::mt19937 & rng, ggml_type t, uint8_t * dst, size_t nblocks) {
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> sc(0.5f, 1.5f);
    const size_t bb = block_bytes(t);
    for (size_t i = 0; i < nblocks; ++i) {
        uint8_t * b = dst + i*bb;
        for (size_t j = 2; j < bb; ++j) b[j] = (uint8_t) byte(rng);
        const uint16_t d = f2h(sc(rng)*8.0f);
        memcpy(b, &d, 2);
    }
}

// false: the kernel does not take this case
static bool setup(fa_data & f, const fa_case & c, int nsm, int minb) {
    f.c = c;
    std::mt19937 rng(1234 + c.n_kv + c.D);
    const int NB = c.D/QK_TQ, n_head = c.n_head_kv*c.gqa;
    f.rowK = NB*block_bytes(c.tk); f.rowV = NB*block_bytes(c.tv);
    f.K.resize((size_t) c.n_kv*c.n_head_kv*f.rowK + 1024);   // + padding like ggml-cuda's quantized tensors
    f.V.resize((size_t) c.n_kv*c.n_head_kv*f.rowV + 1024);
    fill_blocks(rng, c.tk, f.K.data(), (size_t) c.n_kv*c.n_head_kv*NB);
    fill_blocks(rng, c.tv, f.V.data(), (size_t) c.n_kv*c.n_head_kv*NB);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    f.Q.resize((size_t) c.n_q*n_head*c.D);
    for (auto & q : f.Q) q = nd(rng);
    f.mask.assign((size_t) c.n_q*c.n_kv, f2h(0.0f));
    if (c.mask) {
        std::uniform_real_distribution<float> mu(-2.0f, 0.0f);
        for (int i = 0; i < c.n_q; ++i) {
            for (int k = 0; k < c.n_kv; ++k) {
                f.mask[(size_t) i*c.n_kv + k] = (k % 97 == 5) ? f2h(-INFINITY) : f2h(mu(rng));
            }
        }
    }
    f.sinks.resize(n_head);
    for (auto & s : f.sinks) s = nd(rng);

    CK(cudaMalloc(&f.dK, f.K.size())); CK(cudaMemcpy(f.dK, f.K.data(), f.K.size(), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&f.dV, f.V.size())); CK(cudaMemcpy(f.dV, f.V.data(), f.V.size(), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&f.dQ, f.Q.size()*4)); CK(cudaMemcpy(f.dQ, f.Q.data(), f.Q.size()*4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&f.dM, f.mask.size()*2 + 16)); CK(cudaMemcpy(f.dM, f.mask.data(), f.mask.size()*2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&f.dS, n_head*4)); CK(cudaMemcpy(f.dS, f.sinks.data(), n_head*4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&f.dO, (size_t) c.n_q*n_head*c.D*4));

    tq_fa_i8_params & p = f.p;
    p.Q = f.dQ; p.K = f.dK; p.V = f.dV; p.mask = c.mask ? f.dM : nullptr;
    p.sinks = c.sinks ? f.dS : nullptr; p.dst = f.dO;
    p.scale = 1.0f/sqrtf((float) c.D); p.max_bias = 0.0f; p.m0 = p.m1 = 1.0f; p.logit_softcap = c.softcap;
    p.n_head = n_head; p.n_head_log2 = 1;
    p.n_q = c.n_q; p.n_seq = 1; p.n_kv = c.n_kv; p.n_head_kv = c.n_head_kv; p.gqa = c.gqa;
    p.G = std::min(c.gqa, TQ_FA_MAX_G);
    while (c.gqa % p.G) p.G--;
    p.n_groups = c.gqa/p.G;
    p.nbq1 = (int64_t) n_head*c.D*4; p.nbq2 = c.D*4; p.nbq3 = p.nbq1*c.n_q;
    p.nbk1 = (int64_t) c.n_head_kv*f.rowK; p.nbk2 = f.rowK; p.nbk3 = p.nbk1*c.n_kv;
    p.nbv1 = (int64_t) c.n_head_kv*f.rowV; p.nbv2 = f.rowV; p.nbv3 = p.nbv1*c.n_kv;
    p.nbm1 = (int64_t) c.n_kv*2; p.nbm3 = p.nbm1*c.n_q; p.mask_ne3 = 1;
    f.k = select_kernel(c.D, c.tk, c.tv, minb);
    if (!f.k || !tq_fa_i8_layout(p, c.D, c.tk, c.tv)) {
        return false;
    }
    tq_fa_i8_plan(p, tq_fa_i8_blocks_per_sm(f.k, p), nsm);
    // room for the most parts a split may have (time mode also tries tq_fa_i8_split's)
    CK(cudaMalloc(&f.dP, tq_fa_part_rows(p, TQ_FA_COMBINE_MAX_PARTS)*c.D*sizeof(float)));
    CK(cudaMalloc(&f.dMeta, tq_fa_part_rows(p, TQ_FA_COMBINE_MAX_PARTS)*sizeof(float2)));
    p.parts = f.dP;
    p.meta  = f.dMeta;
    return true;
}

static void release(fa_data & f) {
    cudaFree(f.dK); cudaFree(f.dV); cudaFree(f.dQ); cudaFree(f.dM); cudaFree(f.dS); cudaFree(f.dO); cudaFree(f.dP); cudaFree(f.dMeta);
}

// The 64-point Walsh-Hadamard transform in place (Sylvester order, unscaled), as the kernels' tq_cuda_fwht64_warp
static void fwht64(double * x) {
    for (int h = 1; h < 64; h <<= 1) {
        for (int i = 0; i < 64; ++i) {
            if (!(i & h)) {
                const double a = x[i], b = x[i + h];
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
    }
}

// The softmax of row (query i, head h) in both references: adds the mask to the scores s (softcapped),
// hands each key's weight exp(s - M) to add_v(k, w) and returns their sum L, the sink's included.
template <typename AddV>
static double softmax_row(const fa_data & f, int i, int h, std::vector<double> & s, AddV add_v) {
    const fa_case & c = f.c;
    double M = -INFINITY;
    for (int k = 0; k < c.n_kv; ++k) {
        s[k] += c.mask ? h2f(f.mask[(size_t) i*c.n_kv + k]) : 0.0f;
        M = std::max(M, s[k]);
    }
    if (c.sinks) M = std::max(M, (double) f.sinks[h]);
    double L = c.sinks ? exp(f.sinks[h] - M) : 0.0;
    for (int k = 0; k < c.n_kv; ++k) {
        const double w = exp(s[k] - M);
        L += w;
        add_v(k, w);
    }
    return L;
}

// What a kernel that scores in int8 computes, in the rotated domain: Q rotated, scaled and rounded to int8
// per block of 64 (scale amax/127), the centroids rounded to int8 (scale tq_i8_fmt<type>::SK), the output
// rotated back. The kernel must match this to f16 rounding (its P) and ex2.approx.
struct int8_codebook {
    ggml_type type; float sk; float c8[16];
    explicit int8_codebook(ggml_type t) : type(t) {
        sk = t == GGML_TYPE_TQ4_0 ? tq_i8_fmt<GGML_TYPE_TQ4_0>::SK : t == GGML_TYPE_TQ3_0 ? tq_i8_fmt<GGML_TYPE_TQ3_0>::SK
                                                                   : tq_i8_fmt<GGML_TYPE_TQV2_0>::SK;
        const int bits = ggml_tq_cuda_bits(t);
        for (int j = 0; j < (1 << bits); ++j) {
            c8[j] = nearbyintf(tq_codebook(bits)[j]*sk);
        }
    }
    // element j's int8 centroid of the block at b
    float operator()(const uint8_t * b, int j) const {
        if (type == GGML_TYPE_TQ4_0) {
            const block_tq4_0 * x = (const block_tq4_0 *) b;
            return c8[j < 32 ? (x->qs[j] & 15) : (x->qs[j - 32] >> 4)];
        }
        if (type == GGML_TYPE_TQ3_0) {
            const block_tq3_0 * x = (const block_tq3_0 *) b;
            return c8[((x->qs[j % 16] >> (2*(j/16))) & 3) | (((x->qh[j % 8] >> (j/8)) & 1) << 2)];
        }
        const block_tqv2_0 * x = (const block_tqv2_0 *) b;
        return c8[(x->qs[j % 16] >> (2*(j/16))) & 3];
    }
};

static void int8_reference(const fa_data & f, std::vector<double> & ref) {
    const fa_case & c = f.c;
    const int NB = c.D/QK_TQ, n_head = c.n_head_kv*c.gqa;
    const int8_codebook ck(c.tk), cv(c.tv);
    const size_t bk = block_bytes(c.tk), bv = block_bytes(c.tv);
    const float q_scale = c.softcap != 0.0f ? f.p.scale/c.softcap : f.p.scale;
    ref.assign((size_t) c.n_q*n_head*c.D, 0.0);
    std::vector<double> s(c.n_kv), qr(c.D), qs(NB), o(c.D);
    for (int i = 0; i < c.n_q; ++i) {
        for (int h = 0; h < n_head; ++h) {
            const int hk = h / c.gqa;
            const float * q = &f.Q[((size_t) i*n_head + h)*c.D];
            for (int b = 0; b < NB; ++b) {
                double x[64];
                for (int j = 0; j < 64; ++j) x[j] = (double) q[b*64 + j]*tq_signs[j];
                fwht64(x);
                float amax = 0.0f, v[64];
                for (int j = 0; j < 64; ++j) { v[j] = (float) x[j]*0.125f*q_scale; amax = std::max(amax, fabsf(v[j])); }
                const float inv = amax > 0.0f ? 127.0f/amax : 0.0f;
                for (int j = 0; j < 64; ++j) qr[b*64 + j] = nearbyintf(v[j]*inv);
                qs[b] = amax/127.0f;
            }
            for (int k = 0; k < c.n_kv; ++k) {
                const uint8_t * kr = f.K.data() + ((size_t) k*c.n_head_kv + hk)*f.rowK;
                double d = 0.0;
                for (int b = 0; b < NB; ++b) {
                    const uint8_t * kb = kr + b*bk;
                    uint16_t dh; memcpy(&dh, kb, 2);
                    double acc = 0.0;
                    for (int j = 0; j < 64; ++j) acc += qr[b*64 + j]*ck(kb, j);
                    d += acc*qs[b]*h2f(dh)/ck.sk;
                }
                if (c.softcap != 0.0f) d = c.softcap*tanh(d);
                s[k] = d;
            }
            std::fill(o.begin(), o.end(), 0.0);
            const double L = softmax_row(f, i, h, s, [&](int k, double w) {
                const uint8_t * vr = f.V.data() + ((size_t) k*c.n_head_kv + hk)*f.rowV;
                for (int b = 0; b < NB; ++b) {
                    const uint8_t * vb = vr + b*bv;
                    uint16_t dh; memcpy(&dh, vb, 2);
                    const double wd = w*h2f(dh)/cv.sk;
                    for (int j = 0; j < 64; ++j) o[b*64 + j] += wd*cv(vb, j);
                }
            });
            for (int b = 0; b < NB; ++b) {
                fwht64(&o[b*64]);
                for (int j = 0; j < 64; ++j) {
                    ref[((size_t) i*n_head + h)*c.D + b*64 + j] = L > 0.0 ? o[b*64 + j]*0.125*tq_signs[j]/L : 0.0;
                }
            }
        }
    }
}

// max |gpu - ref| / rms(ref) over all outputs against int8_reference; *err_exact gets the same against exact
// attention over the dequantized K/V
static double check(fa_data & f, double * err_exact) {
    const fa_case & c = f.c;
    tq_fa_i8_launch(f.p, f.k, c.D, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const int n_head = c.n_head_kv*c.gqa;
    std::vector<float> out((size_t) c.n_q*n_head*c.D);
    CK(cudaMemcpy(out.data(), f.dO, out.size()*4, cudaMemcpyDeviceToHost));

    std::vector<float> Kd((size_t) c.n_kv*c.n_head_kv*c.D), Vd(Kd.size());
    for (int k = 0; k < c.n_kv; ++k) {
        for (int h = 0; h < c.n_head_kv; ++h) {
            dequant_row(c.tk, f.K.data() + ((size_t) k*c.n_head_kv + h)*f.rowK, &Kd[((size_t) k*c.n_head_kv + h)*c.D], c.D);
            dequant_row(c.tv, f.V.data() + ((size_t) k*c.n_head_kv + h)*f.rowV, &Vd[((size_t) k*c.n_head_kv + h)*c.D], c.D);
        }
    }
    double max_err = 0.0, sum_sq = 0.0;
    std::vector<double> s(c.n_kv), o(c.D);
    for (int i = 0; i < c.n_q; ++i) {
        for (int h = 0; h < n_head; ++h) {
            const int hk = h / c.gqa;
            const float * q = &f.Q[((size_t) i*n_head + h)*c.D];
            for (int k = 0; k < c.n_kv; ++k) {
                const float * kr = &Kd[((size_t) k*c.n_head_kv + hk)*c.D];
                double d = 0.0;
                for (int j = 0; j < c.D; ++j) d += (double) q[j]*kr[j];
                d *= f.p.scale;
                if (c.softcap != 0.0f) d = c.softcap*tanh(d/c.softcap*1.0);
                s[k] = d;
            }
            std::fill(o.begin(), o.end(), 0.0);
            const double L = softmax_row(f, i, h, s, [&](int k, double w) {
                const float * vr = &Vd[((size_t) k*c.n_head_kv + hk)*c.D];
                for (int j = 0; j < c.D; ++j) o[j] += w*vr[j];
            });
            for (int j = 0; j < c.D; ++j) {
                const double ref = o[j]/L, got = out[((size_t) i*n_head + h)*c.D + j];
                max_err = std::max(max_err, std::isfinite(got) ? fabs(got - ref) : INFINITY);
                sum_sq += ref*ref;
            }
        }
    }
    *err_exact = max_err/sqrt(sum_sq/out.size());
    std::vector<double> ref8;
    int8_reference(f, ref8);
    double max8 = 0.0, sq8 = 0.0;
    for (size_t j = 0; j < out.size(); ++j) {
        max8 = std::max(max8, std::isfinite(out[j]) ? fabs(out[j] - ref8[j]) : INFINITY);
        sq8 += ref8[j]*ref8[j];
    }
    return max8/sqrt(sq8/out.size());
}

static const ggml_type tq_types[] = { GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0, GGML_TYPE_TQV2_0 };

static const char * tname(ggml_type t) { return t == GGML_TYPE_TQ4_0 ? "tq4_0" : t == GGML_TYPE_TQ3_0 ? "tq3_0" : "tqv2_0"; }

// "tq4_0" (K and V) or "K/V", e.g. "tq4_0/tqv2_0"
static bool parse_types(const std::string & s, ggml_type & tk, ggml_type & tv) {
    auto one = [](const std::string & n, ggml_type & t) {
        for (ggml_type c : tq_types) {
            if (n == tname(c)) { t = c; return true; }
        }
        return false;
    };
    const size_t slash = s.find('/');
    return slash == std::string::npos ? one(s, tk) && one(s, tv) : one(s.substr(0, slash), tk) && one(s.substr(slash + 1), tv);
}

static std::string pair_name(ggml_type tk, ggml_type tv) {
    return tk == tv ? tname(tk) : std::string(tname(tk)) + "/" + tname(tv);
}

int main(int argc, char ** argv) {
    const std::string mode = argc > 1 ? argv[1] : "check";
    int dev = 0, nsm = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));

    if (mode == "check") {
        // the softcap reference applies tanh to scale*q.k/softcap like ggml: x = softcap*tanh(x*scale/softcap)
        std::vector<fa_case> cases;
        for (int D : {64, 128, 256}) {
            for (ggml_type tk : tq_types) {
                for (ggml_type tv : tq_types) {
                    for (int gqa : {1, 4, 8}) {
                        cases.push_back({D, tk, tv, 1000, 2, gqa, 1, true, 0.0f, false});
                    }
                }
            }
        }
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 4099, 8, 4, 3, true, 0.0f, false});
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 77, 8, 4, 1, true, 0.0f, true});
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 20000, 8, 4, 1, false, 0.0f, true});
        cases.push_back({64, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 513, 2, 5, 2, true, 0.0f, false});     // head 1: offset 2
        cases.push_back({64, GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0, 700, 6, 3, 1, true, 0.0f, false});     // 3 heads/block: offset 2
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 999, 2, 32, 1, true, 0.0f, false});  // 4 groups of 8
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQ4_0, 300, 4, 2, 1, true, 30.0f, false});   // softcap
        cases.push_back({256, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0, 33, 1, 16, 8, true, 0.0f, false});   // two groups of 8
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 300, 4, 2, 1, true, 30.0f, false});   // softcap
        cases.push_back({256, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 33, 1, 16, 8, true, 0.0f, true});    // two groups of 8
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 1500, 2, 6, 1, true, 0.0f, false});  // 6 columns
        cases.push_back({256, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0, 40000, 4, 8, 1, true, 0.0f, false}); // many blocks
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0, 4099, 8, 4, 3, true, 0.0f, false});
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0, 20000, 8, 4, 1, false, 0.0f, true});
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0, 1500, 2, 6, 1, true, 0.0f, false});  // 6 columns
        cases.push_back({256, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0, 40000, 4, 8, 1, true, 0.0f, true});  // many blocks, sinks
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0, 30000, 8, 4, 1, true, 0.0f, false});
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQ4_0, 30000, 8, 4, 2, true, 0.0f, false});
        // tqv2_0 V beside tq4_0 K, the pairing it is meant for
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 4099, 8, 4, 3, true, 0.0f, false});
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 20000, 8, 4, 1, false, 0.0f, true});
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 999, 2, 32, 1, true, 0.0f, false});  // 4 groups of 8
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 300, 4, 2, 1, true, 30.0f, false});  // softcap
        cases.push_back({128, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 1500, 2, 6, 1, true, 0.0f, false});  // 6 columns
        cases.push_back({256, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 33, 1, 16, 8, true, 0.0f, true});    // two groups of 8
        cases.push_back({256, GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0, 40000, 4, 8, 1, true, 0.0f, true});  // many blocks, sinks
        cases.push_back({128, GGML_TYPE_TQV2_0, GGML_TYPE_TQV2_0, 30000, 8, 4, 2, true, 0.0f, false});
        cases.push_back({128, GGML_TYPE_TQ3_0, GGML_TYPE_TQV2_0, 30000, 8, 4, 1, true, 0.0f, false});
        int fails = 0, skipped = 0;
        for (const fa_case & c : cases) {
            for (int minb : all_minb) {
                fa_data f;
                if (!setup(f, c, nsm, minb)) {
                    skipped++;
                    release(f);
                    continue;
                }
                double e_exact = 0.0;
                const double e = check(f, &e_exact);
                const bool ok = e < TQ_FA_CHECK_TOL;
                fails += !ok;
                printf("%-4s D=%3d K=%s V=%s n_kv=%5d kv_heads=%d gqa=%2d n_q=%d mask=%d sinks=%d blocks=%3d minb=%d  err/rms=%.2e (exact attention: %.2e)\n",
                       ok ? "ok" : "FAIL", c.D, tname(c.tk), tname(c.tv), c.n_kv, c.n_head_kv, c.gqa, c.n_q, c.mask, c.sinks,
                       f.p.n_blocks, minb, e, e_exact);
                release(f);
            }
        }
        const int ran = (int) (cases.size()*all_minb.size()) - skipped;
        printf("%d of %d cases failed (%d not taken by this kernel)\n", fails, ran, skipped);
        return fails != 0 || ran == 0;
    }

    if (mode == "once") { // for a profiler: fattn_bench once T n_kv minb, five launches
        ggml_type tk = GGML_TYPE_TQ4_0, tv = GGML_TYPE_TQ4_0;
        if (argc > 2 && !parse_types(argv[2], tk, tv)) {
            fprintf(stderr, "unknown types %s: tq4_0, tq3_0, tqv2_0 or K/V such as tq4_0/tqv2_0\n", argv[2]);
            return 1;
        }
        const int n_kv = argc > 3 ? atoi(argv[3]) : 32768, minb = argc > 4 ? atoi(argv[4]) : 4;
        fa_data f;
        if (!setup(f, {128, tk, tv, n_kv, 8, 4, 1, true, 0.0f, false}, nsm, minb)) {
            fprintf(stderr, "the kernel does not take %s\n", pair_name(tk, tv).c_str());
            return 1;
        }
        for (int i = 0; i < 5; ++i) tq_fa_i8_launch(f.p, f.k, 128, 0);
        CK(cudaDeviceSynchronize());
        release(f);
        return 0;
    }

    // time: Llama-3-8B attention (head 128, 8 KV heads, GQA 4) unless FAB_SHAPES names others as
    // "kv_heads:gqa:head" words (such as "4:7:128 2:6:128" for Qwen2-7B and Qwen2.5-1.5B), one query token. "cold": the launches cycle
    // through copies of K/V that together exceed the L2 cache three times, so each launch reads its K/V from
    // memory as a decode step does (between two layers' attention the weights pass through L2); "hot": one
    // copy, launched back to back (32k keys of TQ4_0, 35.7 MB, fit an H100's 50 MB L2: partly L2 reads).
    std::vector<int> minbs;
    for (int i = 2; i < argc; ++i) minbs.push_back(atoi(argv[i]));
    if (minbs.empty()) minbs = all_minb;
    int l2_bytes = 0;
    CK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, dev));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    // FAB_WAVES: key splits to time besides the plan's (0): "2 3" = about 2 and 3 blocks per SM (tq_fa_i8_split)
    std::vector<int> waves_list;
    {
        std::istringstream in(getenv("FAB_WAVES") ? getenv("FAB_WAVES") : "0");
        std::string w;
        while (in >> w) {
            char * end = nullptr;
            const long v = strtol(w.c_str(), &end, 10);
            if (*end != '\0' || v < 0 || v > 32) {
                fprintf(stderr, "FAB_WAVES: \"%s\" is not a number of blocks per SM (0 for the plan's split, 1 .. 32)\n", w.c_str());
                return 1;
            }
            waves_list.push_back((int) v);
        }
    }
    std::vector<std::array<int, 3>> shapes; // kv_heads, gqa, head
    {
        std::istringstream in(getenv("FAB_SHAPES") ? getenv("FAB_SHAPES") : "8:4:128");
        std::string w;
        int kvh, gqa, D;
        while (in >> w) {
            if (sscanf(w.c_str(), "%d:%d:%d", &kvh, &gqa, &D) != 3 || kvh < 1 || gqa < 1 || (D != 128 && D != 256)) {
                fprintf(stderr, "FAB_SHAPES: \"%s\" is not kv_heads:gqa:head (head 128 or 256)\n", w.c_str());
                return 1;
            }
            shapes.push_back({kvh, gqa, D});
        }
    }
    for (const auto & sh : shapes)
    for (auto tt : {std::make_pair(GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0), std::make_pair(GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0),
                    std::make_pair(GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0)}) {
        for (int n_kv : {256, 8192, 32768, 65536}) {
            for (int minb : minbs) {
                fa_data f;
                if (!setup(f, {sh[2], tt.first, tt.second, n_kv, sh[0], sh[1], 1, true, 0.0f, false}, nsm, minb)) {
                    release(f);
                    continue;
                }
                const double bytes = (double) n_kv*sh[0]*(f.rowK + f.rowV);
                const int n_sets = (int) std::min(256.0, std::ceil(3.0*l2_bytes/bytes));
                std::vector<char *> dK(n_sets, f.dK), dV(n_sets, f.dV);
                for (int i = 1; i < n_sets; ++i) {
                    CK(cudaMalloc(&dK[i], f.K.size())); CK(cudaMemcpy(dK[i], f.dK, f.K.size(), cudaMemcpyDeviceToDevice));
                    CK(cudaMalloc(&dV[i], f.V.size())); CK(cudaMemcpy(dV[i], f.dV, f.V.size(), cudaMemcpyDeviceToDevice));
                }
                const int iters = n_kv >= 32768 ? 200 : 1000;
                for (int waves : waves_list)
                for (int sets : {n_sets, 1}) {
                    tq_fa_i8_params p = f.p;
                    if (waves > 0) {
                        tq_fa_i8_split(p, waves, nsm);
                    }
                    auto launch = [&](int i) {
                        p.K = dK[i % sets]; p.V = dV[i % sets];
                        tq_fa_i8_launch(p, f.k, sh[2], 0);
                    };
                    for (int i = 0; i < 20; ++i) launch(i);
                    CK(cudaDeviceSynchronize());
                    CK(cudaEventRecord(e0));
                    for (int i = 0; i < iters; ++i) launch(i);
                    CK(cudaEventRecord(e1));
                    CK(cudaEventSynchronize(e1));
                    CK(cudaGetLastError());
                    float ms = 0.0f;
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    const double us = 1e3*ms/iters;
                    printf("time kv_heads=%d gqa=%d D=%d %s n_kv=%6d minb=%d waves=%d blocks=%3dx%d keys/block=%5d copy=%2d B  %-4s (%3d sets)  %8.2f us  %7.1f GB/s (K+V)\n",
                           sh[0], sh[1], sh[2], pair_name(tt.first, tt.second).c_str(), n_kv, minb, waves, p.n_blocks, p.n_head_kv/p.hb, p.keys_per_block, p.cp_bytes,
                           sets > 1 ? "cold" : "hot", sets, us, bytes/us*1e-3);
                }
                for (int i = 1; i < n_sets; ++i) {
                    cudaFree(dK[i]); cudaFree(dV[i]);
                }
                release(f);
            }
        }
    }
    return 0;
}
