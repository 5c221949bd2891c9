// CUDA kernels of ggml-tq against the scalar reference (tq-ref.c), bit for bit, for each TQ type:
//   - device helpers (tq-common.cuh): warp quantize -> the reference's bytes (with blocks where the scale search
//     keeps a gain other than 1), warp dequantize -> the reference's floats, rotate / unrotate ->
//     tq_rotate_row_ref / tq_unrotate_row_ref, device tables == tq-codebook.h, the centroid index of every float,
//     the shuffle lookup of every index from every lane (the 6-bit one through its mirrored half);
//   - ggml ops (tq-cuda.cu, through hand-made ggml_tensor structs): SET_ROWS from f32/f16 with i32/i64 indices
//     and broadcasting, GET_ROWS to f32/f16, CPY f32/f16 -> TQ and TQ -> f32/f16 through permuted views,
//     the contiguous and non-contiguous conversions to f32/f16 that flash attention uses.
// Prints "N passed, M failed" and exits non-zero on any failure. Needs a GPU; no libggml.
//
// Build and run (tools/check_cuda.sh builds it as build/cuda-check/test-tq-cuda, with the flags ggml-cuda uses):
//   tools/check_cuda.sh --test && build/cuda-check/test-tq-cuda
#include "tq-cuda.h"
#include "tq-common.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

// This test links tq-cuda.cu without libggml and libggml-cuda: what tq-cuda.cu calls of them (GGML_ASSERT, and
// the early launch of ggml-cuda's common.cuh) ends here.
extern "C" void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "%s:%d: ", file, line);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\n");
    abort();
}

[[noreturn]] void ggml_cuda_error(const char * stmt, const char * func, const char * file, int line, const char * msg) {
    fprintf(stderr, "%s:%d (%s): %s: %s\n", file, line, func, stmt, msg);
    abort();
}

int ggml_cuda_get_device() {
    int id = 0;
    cudaGetDevice(&id);
    return id;
}

#define CUDA_CHECK(x)                                                                              \
    do {                                                                                           \
        const cudaError_t err_ = (x);                                                              \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_));  \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

static int n_passed = 0;
static int n_failed = 0;

static void check(bool ok, const char * fmt, ...) {
    char name[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);
    (ok ? n_passed : n_failed)++;
    printf("%s %s\n", ok ? "ok  " : "FAIL", name);
}

// first differing byte, -1 if equal
static long first_diff(const void * a, const void * b, size_t n) {
    const uint8_t * x = (const uint8_t *) a;
    const uint8_t * y = (const uint8_t *) b;
    for (size_t i = 0; i < n; ++i) {
        if (x[i] != y[i]) {
            return (long) i;
        }
    }
    return -1;
}

static bool same_bytes(const void * got, const void * want, size_t n, const char * what) {
    const long i = first_diff(got, want, n);
    if (i >= 0) {
        printf("     %s: first difference at byte %ld of %zu (got 0x%02x, want 0x%02x)\n", what, i, n,
               ((const uint8_t *) got)[i], ((const uint8_t *) want)[i]);
    }
    return i < 0;
}

// ---- device buffers -------------------------------------------------------------------------------

struct dbuf {
    void * ptr = nullptr;
    size_t size = 0;
    explicit dbuf(size_t n) : size(n) { CUDA_CHECK(cudaMalloc(&ptr, n ? n : 1)); }
    dbuf(const void * host, size_t n) : dbuf(n) { CUDA_CHECK(cudaMemcpy(ptr, host, n, cudaMemcpyHostToDevice)); }
    ~dbuf() { cudaFree(ptr); }
    template <typename T> std::vector<T> get() const {
        std::vector<T> v(size/sizeof(T));
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(v.data(), ptr, size, cudaMemcpyDeviceToHost));
        return v;
    }
};

template <typename T> static dbuf to_device(const std::vector<T> & v) { return dbuf(v.data(), v.size()*sizeof(T)); }

// ---- host reference ---------------------------------------------------------------------------------

static size_t type_size(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32:    return 4;
        case GGML_TYPE_F16:    return 2;
        case GGML_TYPE_I32:    return 4;
        case GGML_TYPE_I64:    return 8;
        case GGML_TYPE_TQ4_0:  return sizeof(block_tq4_0);
        case GGML_TYPE_TQ3_0:  return sizeof(block_tq3_0);
        case GGML_TYPE_TQV2_0: return sizeof(block_tqv2_0);
        case GGML_TYPE_TQ6_0:  return sizeof(block_tq6_0);
        default: abort();
    }
}
static int64_t blck_size(ggml_type t) { return ggml_tq_cuda_is_tq_type(t) ? QK_TQ : 1; }

static size_t row_bytes(ggml_type t, int64_t n) { return (size_t)(n/blck_size(t))*type_size(t); }

static const char * tq_name(ggml_type t) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  return "tq4_0";
        case GGML_TYPE_TQ3_0:  return "tq3_0";
        case GGML_TYPE_TQV2_0: return "tqv2_0";
        case GGML_TYPE_TQ6_0:  return "tq6_0";
        default: abort();
    }
}

static void quantize_ref(ggml_type t, const float * x, void * y, int64_t k) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  quantize_row_tq4_0_ref (x, (block_tq4_0  *) y, k); break;
        case GGML_TYPE_TQ3_0:  quantize_row_tq3_0_ref (x, (block_tq3_0  *) y, k); break;
        case GGML_TYPE_TQV2_0: quantize_row_tqv2_0_ref(x, (block_tqv2_0 *) y, k); break;
        case GGML_TYPE_TQ6_0:  quantize_row_tq6_0_ref (x, (block_tq6_0  *) y, k); break;
        default: abort();
    }
}
static void dequantize_ref(ggml_type t, const void * x, float * y, int64_t k) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  dequantize_row_tq4_0_ref ((const block_tq4_0  *) x, y, k); break;
        case GGML_TYPE_TQ3_0:  dequantize_row_tq3_0_ref ((const block_tq3_0  *) x, y, k); break;
        case GGML_TYPE_TQV2_0: dequantize_row_tqv2_0_ref((const block_tqv2_0 *) x, y, k); break;
        case GGML_TYPE_TQ6_0:  dequantize_row_tq6_0_ref ((const block_tq6_0  *) x, y, k); break;
        default: abort();
    }
}

static uint16_t f32_to_f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

// an f16 source value: the "huge" test blocks clamped to the largest finite half (inf input is the caller's to reject)
static uint16_t f32_to_f16_source(float f) { return f32_to_f16_bits(std::fmin(std::fmax(f, -65504.0f), 65504.0f)); }
static float    f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// ggml_tensor with contiguous strides (the fields tq-cuda.cu reads: type, ne, nb, data, src)
static ggml_tensor make_tensor(ggml_type type, std::array<int64_t, 4> ne, void * data) {
    ggml_tensor t;
    memset(&t, 0, sizeof(t));
    t.type  = type;
    t.data  = data;
    t.ne[0] = ne[0]; t.ne[1] = ne[1]; t.ne[2] = ne[2]; t.ne[3] = ne[3];
    t.nb[0] = type_size(type);
    t.nb[1] = row_bytes(type, ne[0]);
    t.nb[2] = t.nb[1]*ne[1];
    t.nb[3] = t.nb[2]*ne[2];
    return t;
}

// byte offset of flat element e of a tensor
static size_t flat_offset(const ggml_tensor & t, int64_t e) {
    const int64_t i0 = e % t.ne[0]; e /= t.ne[0];
    const int64_t i1 = e % t.ne[1]; e /= t.ne[1];
    const int64_t i2 = e % t.ne[2];
    const int64_t i3 = e / t.ne[2];
    return i0*t.nb[0] + i1*t.nb[1] + i2*t.nb[2] + i3*t.nb[3];
}

// ---- test data --------------------------------------------------------------------------------------

static const char * const kind_names[] = {
    "normal", "uniform-scaled", "outliers", "zero", "one-nonzero", "constant", "huge (d saturates)", "tiny", "subnormal-elements",
};
static const int n_kinds = sizeof(kind_names)/sizeof(kind_names[0]);

static void fill_block(std::mt19937 & rng, int kind, float * x) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
    switch (kind) {
        case 0: for (int j = 0; j < QK_TQ; ++j) x[j] = nd(rng); break;
        case 1: { const float s = std::pow(10.0f, 3.0f*ud(rng)); for (int j = 0; j < QK_TQ; ++j) x[j] = s*ud(rng); } break;
        case 2: for (int j = 0; j < QK_TQ; ++j) x[j] = nd(rng)*(rng() % 16 == 0 ? 100.0f : 1.0f); break;
        case 3: for (int j = 0; j < QK_TQ; ++j) x[j] = 0.0f; break;
        case 4: for (int j = 0; j < QK_TQ; ++j) x[j] = 0.0f; x[rng() % QK_TQ] = nd(rng); break;
        case 5: { const float c = nd(rng); for (int j = 0; j < QK_TQ; ++j) x[j] = c; } break;
        case 6: for (int j = 0; j < QK_TQ; ++j) x[j] = 1e5f*nd(rng); break;
        case 7: for (int j = 0; j < QK_TQ; ++j) x[j] = 1e-30f*nd(rng); break;
        // a normal largest magnitude (the reference's 1/amax must stay finite), subnormal others: needs -ftz=false
        case 8: for (int j = 0; j < QK_TQ; ++j) x[j] = 1e-41f*nd(rng); x[rng() % QK_TQ] = 2e-37f; break;
    }
}

static std::vector<float> random_values(std::mt19937 & rng, int64_t nblocks) {
    std::vector<float> x(nblocks*QK_TQ);
    for (int64_t b = 0; b < nblocks; ++b) {
        fill_block(rng, (int)(b % n_kinds), x.data() + b*QK_TQ);
    }
    return x;
}

// random block bytes: any index pattern, scales from subnormal to the largest finite half
static std::vector<uint8_t> random_blocks(std::mt19937 & rng, ggml_type type, int64_t nblocks) {
    const size_t ts = type_size(type);
    std::vector<uint8_t> v(nblocks*ts);
    for (auto & b : v) b = (uint8_t) rng();
    for (int64_t b = 0; b < nblocks; ++b) {
        uint16_t d = (uint16_t)(rng() & 0x7fff);
        if ((d >> 10) == 31) d &= 0x7bff; // no inf/NaN scales
        memcpy(v.data() + b*ts, &d, 2);
    }
    return v;
}

// ---- device-helper kernels -------------------------------------------------------------------------

template <int bits>
static __global__ void k_quantize(const float * x, typename tq_cuda_type<bits>::block * y, int nblocks) {
    const int lane = threadIdx.x % 32;
    const int b    = (blockIdx.x*blockDim.x + threadIdx.x)/32;
    if (b >= nblocks) return; // warp-uniform
    tq_quantize_block_warp<bits>(x[b*QK_TQ + lane], x[b*QK_TQ + lane + 32], lane, tq_cuda_codebook_lane<bits>(lane), y + b);
}

template <int bits>
static __global__ void k_dequantize(const typename tq_cuda_type<bits>::block * x, float * y, int nblocks) {
    const int lane = threadIdx.x % 32;
    const int b    = (blockIdx.x*blockDim.x + threadIdx.x)/32;
    if (b >= nblocks) return;
    float lo, hi;
    tq_dequantize_block_warp<bits>(x + b, lane, tq_cuda_codebook_lane<bits>(lane), lo, hi);
    y[b*QK_TQ + lane]      = lo;
    y[b*QK_TQ + lane + 32] = hi;
}

static __global__ void k_rotate(const float * x, float * y, int nblocks, bool inverse) {
    const int lane = threadIdx.x % 32;
    const int b    = (blockIdx.x*blockDim.x + threadIdx.x)/32;
    if (b >= nblocks) return;
    float lo = x[b*QK_TQ + lane], hi = x[b*QK_TQ + lane + 32];
    if (inverse) tq_cuda_unrotate_warp(lo, hi, lane); else tq_cuda_rotate_warp(lo, hi, lane);
    y[b*QK_TQ + lane]      = lo;
    y[b*QK_TQ + lane + 32] = hi;
}

static int grid_for_warps(int nwarps) { return (nwarps + 7)/8; }

// ---- tests -------------------------------------------------------------------------------------------

static void test_tables() {
    float c6[64], c4[16], c3[8], c2[4];
    CUDA_CHECK(cudaMemcpyFromSymbol(c6, tq_cuda_centroids_6bit, sizeof(c6)));
    CUDA_CHECK(cudaMemcpyFromSymbol(c4, tq_cuda_centroids_4bit, sizeof(c4)));
    CUDA_CHECK(cudaMemcpyFromSymbol(c3, tq_cuda_centroids_3bit, sizeof(c3)));
    CUDA_CHECK(cudaMemcpyFromSymbol(c2, tq_cuda_centroids_2bit, sizeof(c2)));
    bool boundaries_ok = true;
    for (int k = 0; k < 63; ++k) boundaries_ok &= tq_cuda_boundary<6>(k) == tq_boundaries_6bit[k];
    for (int k = 0; k < 15; ++k) boundaries_ok &= tq_cuda_boundary<4>(k) == tq_boundaries_4bit[k];
    for (int k = 0; k < 7;  ++k) boundaries_ok &= tq_cuda_boundary<3>(k) == tq_boundaries_3bit[k];
    for (int k = 0; k < 3;  ++k) boundaries_ok &= tq_cuda_boundary<2>(k) == tq_boundaries_2bit[k];
    check(!memcmp(c6, tq_centroids_6bit, sizeof(c6)) && !memcmp(c4, tq_centroids_4bit, sizeof(c4)) &&
          !memcmp(c3, tq_centroids_3bit, sizeof(c3)) && !memcmp(c2, tq_centroids_2bit, sizeof(c2)) && boundaries_ok,
          "device codebooks and boundaries == tq-codebook.h");
    bool signs_ok = true;
    for (int j = 0; j < QK_TQ; ++j) {
        signs_ok &= (((TQ_SIGN_MASK >> j) & 1) != 0) == (tq_signs[j] < 0.0f);
    }
    check(signs_ok, "TQ_SIGN_MASK == tq_signs");
}

// tq_cuda_nearest_index (integer arithmetic on the positive boundaries) against what it stands for, the number
// of boundaries strictly below z in IEEE comparisons, for every 32-bit pattern: zeros, subnormals, infinities, NaNs.
template <int bits>
static __global__ void k_nearest_index_all(unsigned long long * n_bad, unsigned int * first_bad) {
    unsigned long long bad = 0;
    for (uint64_t u = (uint64_t) blockIdx.x*blockDim.x + threadIdx.x; u < (1ull << 32); u += (uint64_t) gridDim.x*blockDim.x) {
        const float z = __uint_as_float((uint32_t) u);
        int want = 0;
#pragma unroll
        for (int k = 0; k < (1 << bits) - 1; ++k) {
            want += tq_cuda_boundary<bits>(k) < z;
        }
        if (tq_cuda_nearest_index<bits>(z) != want) {
            bad++;
            atomicMin(first_bad, (unsigned int) u);
        }
    }
    if (bad) {
        atomicAdd(n_bad, bad);
    }
}

template <int bits>
static void test_nearest_index() {
    dbuf d_bad(sizeof(unsigned long long)), d_first(sizeof(unsigned int));
    CUDA_CHECK(cudaMemset(d_bad.ptr, 0, d_bad.size));
    CUDA_CHECK(cudaMemset(d_first.ptr, 0xff, d_first.size));
    k_nearest_index_all<bits><<<4096, 256>>>((unsigned long long *) d_bad.ptr, (unsigned int *) d_first.ptr);
    CUDA_CHECK(cudaGetLastError());
    const unsigned long long n_bad = d_bad.get<unsigned long long>()[0];
    if (n_bad) {
        printf("     %llu floats differ, the first 0x%08x\n", n_bad, d_first.get<unsigned int>()[0]);
    }
    check(n_bad == 0, "tq_cuda_nearest_index<%d> == boundaries below, all 2^32 floats", bits);
}

// tq_cuda_codebook_lookup<bits> of every index from every lane, against tq-codebook.h bit for bit: lane l asks
// for index (l + r) mod 2^bits in round r, so every lane reads every index (the 6-bit upper half is a mirror and a
// sign flip of the lanes' lower half).
template <int bits>
static __global__ void k_codebook_lookup(float * out) {
    const int lane = threadIdx.x % 32;
    const float cb = tq_cuda_codebook_lane<bits>(lane);
    for (int r = 0; r < (1 << bits); ++r) {
        out[r*32 + lane] = tq_cuda_codebook_lookup<bits>(cb, (lane + r) & ((1 << bits) - 1));
    }
}

template <int bits>
static void test_codebook_lookup() {
    constexpr int n = 1 << bits;
    dbuf d_out(n*32*sizeof(float));
    k_codebook_lookup<bits><<<1, 32>>>((float *) d_out.ptr);
    CUDA_CHECK(cudaGetLastError());
    const std::vector<float> got = d_out.get<float>();
    const float * c = tq_codebook(bits);
    bool ok = true;
    for (int r = 0; r < n; ++r) {
        for (int l = 0; l < 32; ++l) {
            ok &= !memcmp(&got[r*32 + l], &c[(l + r) % n], sizeof(float));
        }
    }
    check(ok, "tq_cuda_codebook_lookup<%d> == tq_codebook(%d) bitwise, every index from every lane", bits, bits);
}

// The reference's centroid index j of a block, and the indices the encoder picks without its scale search
// (gain 1 alone), from the reference's own steps: a block where they differ kept another gain.
static int ref_index(ggml_type t, const uint8_t * block, int j) {
    if (t == GGML_TYPE_TQ4_0) {
        const block_tq4_0 * b = (const block_tq4_0 *) block;
        return j < QK_TQ/2 ? b->qs[j] & 0xf : b->qs[j - QK_TQ/2] >> 4;
    }
    if (t == GGML_TYPE_TQ3_0) {
        const block_tq3_0 * b = (const block_tq3_0 *) block;
        return ((b->qs[j % 16] >> (2*(j/16))) & 3) | (((b->qh[j % 8] >> (j/8)) & 1) << 2);
    }
    if (t == GGML_TYPE_TQ6_0) {
        const block_tq6_0 * b = (const block_tq6_0 *) block;
        const int lo = j < QK_TQ/2 ? b->qs[j] & 0xf : b->qs[j - QK_TQ/2] >> 4;
        return lo | (((b->qh[j % 16] >> (2*(j/16))) & 3) << 4);
    }
    const block_tqv2_0 * b = (const block_tqv2_0 *) block;
    return (b->qs[j % 16] >> (2*(j/16))) & 3;
}

static void gain1_indices(ggml_type t, const float * x, int * idx) {
    const float * boundaries = t == GGML_TYPE_TQ6_0 ? tq_boundaries_6bit : t == GGML_TYPE_TQ4_0 ? tq_boundaries_4bit :
                               t == GGML_TYPE_TQ3_0 ? tq_boundaries_3bit : tq_boundaries_2bit;
    const int     nb         = (1 << ggml_tq_cuda_bits(t)) - 1;
    float amax = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float inv_amax = 1.0f/amax;
    float xs[QK_TQ], y[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) xs[j] = x[j]*inv_amax;
    tq_rotate_row_ref(xs, y, QK_TQ); // H D (x/amax) / 8, the encoder's roundings
    float sumsq = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) sumsq += y[j]*y[j];
    const float inv_norm = 1.0f/std::sqrt(sumsq);
    for (int j = 0; j < QK_TQ; ++j) {
        const float z = y[j]*inv_norm;
        idx[j] = 0;
        while (idx[j] < nb && boundaries[idx[j]] < z) idx[j]++;
    }
}

template <int bits>
static void test_block_helpers(std::mt19937 & rng, ggml_type type) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const char * name = tq_name(type);
    const int nblocks = 64*n_kinds;
    const std::vector<float> x = random_values(rng, nblocks);

    std::vector<uint8_t> want(nblocks*sizeof(block_t));
    quantize_ref(type, x.data(), want.data(), x.size());
    dbuf dx = to_device(x);
    dbuf dq(want.size());
    k_quantize<bits><<<grid_for_warps(nblocks), 256>>>((const float *) dx.ptr, (block_t *) dq.ptr, nblocks);
    CUDA_CHECK(cudaGetLastError());
    const std::vector<uint8_t> got = dq.get<uint8_t>();
    for (int k = 0; k < n_kinds; ++k) { // block b has kind b % n_kinds
        bool ok = true;
        for (int b = k; b < nblocks; b += n_kinds) {
            ok &= first_diff(got.data() + b*sizeof(block_t), want.data() + b*sizeof(block_t), sizeof(block_t)) < 0;
        }
        check(ok, "%s tq_quantize_block_warp == quantize_row_%s_ref bytes, %s blocks", name, name, kind_names[k]);
    }
    int n_normal = 0, n_searched = 0; // kind 0: Gaussian blocks, where gains other than 1 win now and then
    for (int b = 0; b < nblocks; b += n_kinds, ++n_normal) {
        int idx[QK_TQ];
        gain1_indices(type, x.data() + b*QK_TQ, idx);
        bool same = true;
        for (int j = 0; j < QK_TQ; ++j) same &= idx[j] == ref_index(type, want.data() + b*sizeof(block_t), j);
        n_searched += !same;
    }
    check(n_searched > 0, "%s: the scale search keeps a gain other than 1 in %d of %d normal blocks", name, n_searched, n_normal);

    // dequantize the reference's blocks and random bytes
    for (int src = 0; src < 2; ++src) {
        const std::vector<uint8_t> blocks = src == 0 ? want : random_blocks(rng, type, nblocks);
        std::vector<float> ref(nblocks*QK_TQ);
        dequantize_ref(type, blocks.data(), ref.data(), ref.size());
        dbuf db = to_device(blocks);
        dbuf dy(ref.size()*sizeof(float));
        k_dequantize<bits><<<grid_for_warps(nblocks), 256>>>((const block_t *) db.ptr, (float *) dy.ptr, nblocks);
        CUDA_CHECK(cudaGetLastError());
        const std::vector<float> y = dy.get<float>();
        check(same_bytes(y.data(), ref.data(), ref.size()*sizeof(float), "dequantized"),
              "%s tq_dequantize_block_warp == dequantize_row_%s_ref bitwise, %s", name, name,
              src == 0 ? "quantized blocks" : "random block bytes");
    }
}

static void test_rotation(std::mt19937 & rng) {
    const int nblocks = 256;
    const std::vector<float> x = random_values(rng, nblocks);
    for (int inverse = 0; inverse < 2; ++inverse) {
        std::vector<float> ref(x.size());
        if (inverse) tq_unrotate_row_ref(x.data(), ref.data(), x.size()); else tq_rotate_row_ref(x.data(), ref.data(), x.size());
        dbuf dx = to_device(x);
        dbuf dy(x.size()*sizeof(float));
        k_rotate<<<grid_for_warps(nblocks), 256>>>((const float *) dx.ptr, (float *) dy.ptr, nblocks, inverse);
        CUDA_CHECK(cudaGetLastError());
        const std::vector<float> y = dy.get<float>();
        check(same_bytes(y.data(), ref.data(), ref.size()*sizeof(float), "rotated"),
              "%s == %s bitwise", inverse ? "tq_cuda_unrotate_warp" : "tq_cuda_rotate_warp", inverse ? "tq_unrotate_row_ref" : "tq_rotate_row_ref");
    }
}

// SET_ROWS: src [ne0, nr, ne2, ne3] into dst [ne0, nr_dst, ne2, ne3], indices [nr, ne11, ne12]
static void test_set_rows(std::mt19937 & rng, ggml_type type, ggml_type src_type, ggml_type idx_type,
                          int64_t ne0, int64_t nr, int64_t ne2, int64_t ne3, int64_t ne11, int64_t ne12, int64_t nr_dst) {
    const int64_t n = ne0*nr*ne2*ne3;
    std::vector<float> x = random_values(rng, n/QK_TQ);
    std::vector<uint8_t> src_bytes(n*type_size(src_type));
    if (src_type == GGML_TYPE_F16) {
        for (int64_t i = 0; i < n; ++i) {
            const uint16_t h = f32_to_f16_source(x[i]);
            memcpy(src_bytes.data() + 2*i, &h, 2);
            x[i] = f16_bits_to_f32(h); // what the reference quantizes
        }
    } else {
        memcpy(src_bytes.data(), x.data(), n*4);
    }

    // each (i2 % ne11, i3 % ne12) slice of indices is a random permutation's prefix: no row written twice
    std::vector<int64_t> idx(nr*ne11*ne12);
    for (int64_t s = 0; s < ne11*ne12; ++s) {
        std::vector<int64_t> perm(nr_dst);
        for (int64_t i = 0; i < nr_dst; ++i) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int64_t i = 0; i < nr; ++i) idx[s*nr + i] = perm[i];
    }
    std::vector<uint8_t> idx_bytes(idx.size()*type_size(idx_type));
    for (size_t i = 0; i < idx.size(); ++i) {
        if (idx_type == GGML_TYPE_I64) memcpy(idx_bytes.data() + 8*i, &idx[i], 8);
        else { const int32_t v = (int32_t) idx[i]; memcpy(idx_bytes.data() + 4*i, &v, 4); }
    }

    const size_t rb = row_bytes(type, ne0);
    std::vector<uint8_t> want(rb*nr_dst*ne2*ne3, 0xa5); // rows not written keep their bytes
    for (int64_t i3 = 0; i3 < ne3; ++i3) {
        for (int64_t i2 = 0; i2 < ne2; ++i2) {
            for (int64_t i1 = 0; i1 < nr; ++i1) {
                const int64_t row = idx[((i3 % ne12)*ne11 + (i2 % ne11))*nr + i1];
                quantize_ref(type, x.data() + ((i3*ne2 + i2)*nr + i1)*ne0,
                             want.data() + ((i3*ne2 + i2)*nr_dst + row)*rb, ne0);
            }
        }
    }

    dbuf dsrc = to_device(src_bytes), didx = to_device(idx_bytes);
    std::vector<uint8_t> init(want.size(), 0xa5);
    dbuf ddst = to_device(init);
    ggml_tensor src0 = make_tensor(src_type, {ne0, nr, ne2, ne3}, dsrc.ptr);
    ggml_tensor src1 = make_tensor(idx_type, {nr, ne11, ne12, 1}, didx.ptr);
    ggml_tensor dst  = make_tensor(type, {ne0, nr_dst, ne2, ne3}, ddst.ptr);
    dst.src[0] = &src0;
    dst.src[1] = &src1;
    const bool supported = ggml_tq_cuda_supports_set_rows(&dst);
    if (supported) {
        ggml_tq_cuda_set_rows(&src0, &src1, &dst, 0);
        CUDA_CHECK(cudaGetLastError());
    }
    const std::vector<uint8_t> got = ddst.get<uint8_t>();
    check(supported && same_bytes(got.data(), want.data(), want.size(), "cache"),
          "SET_ROWS %s <- %s [%lld,%lld,%lld,%lld] %s idx [%lld,%lld,%lld] into %lld rows",
          tq_name(type), src_type == GGML_TYPE_F16 ? "f16" : "f32",
          (long long) ne0, (long long) nr, (long long) ne2, (long long) ne3, idx_type == GGML_TYPE_I64 ? "i64" : "i32",
          (long long) nr, (long long) ne11, (long long) ne12, (long long) nr_dst);
}

// GET_ROWS: src0 [ne0, nr, ne2, 1] TQ, idx [ni, ne2, 1] -> dst [ne0, ni, ne2] f32 or f16
static void test_get_rows(std::mt19937 & rng, ggml_type type, ggml_type dst_type, int64_t ne0, int64_t nr, int64_t ne2, int64_t ni) {
    const std::vector<float> x = random_values(rng, ne0*nr*ne2/QK_TQ);
    const size_t rb = row_bytes(type, ne0);
    std::vector<uint8_t> q(rb*nr*ne2);
    quantize_ref(type, x.data(), q.data(), x.size());
    std::vector<int32_t> idx(ni*ne2);
    for (auto & i : idx) i = (int32_t)(rng() % nr);

    const size_t ds = type_size(dst_type);
    std::vector<uint8_t> want(ne0*ni*ne2*ds);
    std::vector<float> row(ne0);
    for (int64_t i2 = 0; i2 < ne2; ++i2) {
        for (int64_t i1 = 0; i1 < ni; ++i1) {
            dequantize_ref(type, q.data() + (i2*nr + idx[i2*ni + i1])*rb, row.data(), ne0);
            for (int64_t i0 = 0; i0 < ne0; ++i0) {
                uint8_t * p = want.data() + ((i2*ni + i1)*ne0 + i0)*ds;
                if (dst_type == GGML_TYPE_F32) memcpy(p, &row[i0], 4);
                else { const uint16_t h = f32_to_f16_bits(row[i0]); memcpy(p, &h, 2); }
            }
        }
    }

    dbuf dq = to_device(q), didx = to_device(idx), ddst(want.size());
    ggml_tensor src0 = make_tensor(type, {ne0, nr, ne2, 1}, dq.ptr);
    ggml_tensor src1 = make_tensor(GGML_TYPE_I32, {ni, ne2, 1, 1}, didx.ptr);
    ggml_tensor dst  = make_tensor(dst_type, {ne0, ni, ne2, 1}, ddst.ptr);
    dst.src[0] = &src0;
    dst.src[1] = &src1;
    const bool supported = ggml_tq_cuda_supports_get_rows(&dst);
    if (supported) {
        ggml_tq_cuda_get_rows(&src0, &src1, &dst, 0);
        CUDA_CHECK(cudaGetLastError());
    }
    const std::vector<uint8_t> got = ddst.get<uint8_t>();
    check(supported && same_bytes(got.data(), want.data(), want.size(), "rows"), "GET_ROWS %s -> %s [%lld,%lld,%lld] x %lld",
          tq_name(type), dst_type == GGML_TYPE_F32 ? "f32" : "f16",
          (long long) ne0, (long long) nr, (long long) ne2, (long long) ni);
}

// a view of a contiguous base tensor with dims 1 and 2 swapped (ggml_permute(0, 2, 1, 3))
static ggml_tensor swapped_view(const ggml_tensor & base) {
    ggml_tensor v = base;
    std::swap(v.ne[1], v.ne[2]);
    std::swap(v.nb[1], v.nb[2]);
    return v;
}

// CPY float -> TQ: src is a permuted view (or a contiguous tensor of another shape), dst a contiguous TQ tensor
static void test_cpy_to_tq(std::mt19937 & rng, ggml_type type, ggml_type src_type, std::array<int64_t, 4> src_ne, bool permute,
                           std::array<int64_t, 4> dst_ne) {
    const int64_t n = src_ne[0]*src_ne[1]*src_ne[2]*src_ne[3];
    std::vector<float> x = random_values(rng, n/QK_TQ);
    const size_t es = type_size(src_type);
    std::vector<uint8_t> base_bytes(n*es);
    for (int64_t i = 0; i < n; ++i) {
        if (src_type == GGML_TYPE_F16) {
            const uint16_t h = f32_to_f16_source(x[i]);
            memcpy(base_bytes.data() + 2*i, &h, 2);
        } else {
            memcpy(base_bytes.data() + 4*i, &x[i], 4);
        }
    }
    dbuf dsrc = to_device(base_bytes);
    const ggml_tensor base = make_tensor(src_type, src_ne, dsrc.ptr);
    const ggml_tensor src  = permute ? swapped_view(base) : base;

    // the reference reads the view's elements in flat order
    std::vector<float> flat(n);
    for (int64_t e = 0; e < n; ++e) {
        const uint8_t * p = base_bytes.data() + flat_offset(src, e);
        if (src_type == GGML_TYPE_F16) { uint16_t h; memcpy(&h, p, 2); flat[e] = f16_bits_to_f32(h); }
        else                           { memcpy(&flat[e], p, 4); }
    }
    std::vector<uint8_t> want(n/QK_TQ*type_size(type));
    quantize_ref(type, flat.data(), want.data(), n);

    dbuf ddst(want.size());
    ggml_tensor dst = make_tensor(type, dst_ne, ddst.ptr);
    const bool supported = ggml_tq_cuda_supports_cpy(src.type, dst.type);
    if (supported) {
        ggml_tq_cuda_cpy(&src, &dst, 0);
        CUDA_CHECK(cudaGetLastError());
    }
    const std::vector<uint8_t> got = ddst.get<uint8_t>();
    check(supported && same_bytes(got.data(), want.data(), want.size(), "blocks"), "CPY %s [%lld,%lld,%lld,%lld]%s -> %s",
          src_type == GGML_TYPE_F16 ? "f16" : "f32", (long long) src.ne[0], (long long) src.ne[1], (long long) src.ne[2],
          (long long) src.ne[3], permute ? " (permuted view)" : "", tq_name(type));
}

// CPY TQ -> float: src a contiguous TQ tensor, dst a permuted view of a contiguous base (or another shape)
static void test_cpy_from_tq(std::mt19937 & rng, ggml_type type, ggml_type dst_type, std::array<int64_t, 4> src_ne,
                             std::array<int64_t, 4> base_ne, bool permute) {
    const int64_t n = src_ne[0]*src_ne[1]*src_ne[2]*src_ne[3];
    const std::vector<float> x = random_values(rng, n/QK_TQ);
    std::vector<uint8_t> q(n/QK_TQ*type_size(type));
    quantize_ref(type, x.data(), q.data(), n);
    std::vector<float> flat(n);
    dequantize_ref(type, q.data(), flat.data(), n);

    const size_t es = type_size(dst_type);
    dbuf dq = to_device(q), ddst(n*es);
    const ggml_tensor src  = make_tensor(type, src_ne, dq.ptr);
    const ggml_tensor base = make_tensor(dst_type, base_ne, ddst.ptr);
    ggml_tensor dst = permute ? swapped_view(base) : base;

    std::vector<uint8_t> want(n*es);
    for (int64_t e = 0; e < n; ++e) {
        uint8_t * p = want.data() + flat_offset(dst, e);
        if (dst_type == GGML_TYPE_F16) { const uint16_t h = f32_to_f16_bits(flat[e]); memcpy(p, &h, 2); }
        else                           { memcpy(p, &flat[e], 4); }
    }
    const bool supported = ggml_tq_cuda_supports_cpy(src.type, dst.type);
    if (supported) {
        ggml_tq_cuda_cpy(&src, &dst, 0);
        CUDA_CHECK(cudaGetLastError());
    }
    const std::vector<uint8_t> got = ddst.get<uint8_t>();
    check(supported && same_bytes(got.data(), want.data(), want.size(), "values"), "CPY %s [%lld,%lld,%lld,%lld] -> %s [%lld,%lld,%lld,%lld]%s",
          tq_name(type), (long long) src_ne[0], (long long) src_ne[1], (long long) src_ne[2],
          (long long) src_ne[3], dst_type == GGML_TYPE_F16 ? "f16" : "f32", (long long) dst.ne[0], (long long) dst.ne[1],
          (long long) dst.ne[2], (long long) dst.ne[3], permute ? " (permuted view)" : "");
}

// ggml_get_to_fp16/fp32_cuda (contiguous) and the _nc variants over a view [ne0, ne1, ne2, ne3] of a larger
// TQ tensor [base0, base1, ne2, base3] (the K/V cache views flash attention converts)
static void test_convert(std::mt19937 & rng, ggml_type type, bool f16, int64_t base0, int64_t base1, int64_t base3,
                         int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    const int64_t nbase = base0*base1*ne2*base3;
    const std::vector<float> x = random_values(rng, nbase/QK_TQ);
    std::vector<uint8_t> q(nbase/QK_TQ*type_size(type));
    quantize_ref(type, x.data(), q.data(), nbase);
    std::vector<float> all(nbase);
    dequantize_ref(type, q.data(), all.data(), nbase);
    dbuf dq = to_device(q);
    const char * tname = tq_name(type);
    // convert.cu's entry points of this type
    typedef void (*to_fp16_t)(const void *, half *, int64_t, cudaStream_t);
    typedef void (*to_fp32_t)(const void *, float *, int64_t, cudaStream_t);
    typedef void (*to_fp16_nc_t)(const void *, half *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
    typedef void (*to_fp32_nc_t)(const void *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
    to_fp16_t to_fp16; to_fp32_t to_fp32; to_fp16_nc_t to_fp16_nc; to_fp32_nc_t to_fp32_nc;
    switch (type) {
        case GGML_TYPE_TQ4_0:
            to_fp16 = ggml_tq4_0_to_fp16_cuda; to_fp32 = ggml_tq4_0_to_fp32_cuda;
            to_fp16_nc = ggml_tq4_0_to_fp16_nc_cuda; to_fp32_nc = ggml_tq4_0_to_fp32_nc_cuda;
            break;
        case GGML_TYPE_TQ3_0:
            to_fp16 = ggml_tq3_0_to_fp16_cuda; to_fp32 = ggml_tq3_0_to_fp32_cuda;
            to_fp16_nc = ggml_tq3_0_to_fp16_nc_cuda; to_fp32_nc = ggml_tq3_0_to_fp32_nc_cuda;
            break;
        case GGML_TYPE_TQV2_0:
            to_fp16 = ggml_tqv2_0_to_fp16_cuda; to_fp32 = ggml_tqv2_0_to_fp32_cuda;
            to_fp16_nc = ggml_tqv2_0_to_fp16_nc_cuda; to_fp32_nc = ggml_tqv2_0_to_fp32_nc_cuda;
            break;
        case GGML_TYPE_TQ6_0:
            to_fp16 = ggml_tq6_0_to_fp16_cuda; to_fp32 = ggml_tq6_0_to_fp32_cuda;
            to_fp16_nc = ggml_tq6_0_to_fp16_nc_cuda; to_fp32_nc = ggml_tq6_0_to_fp32_nc_cuda;
            break;
        default: abort();
    }

    auto encode = [&](const std::vector<float> & v) {
        std::vector<uint8_t> b(v.size()*(f16 ? 2 : 4));
        for (size_t i = 0; i < v.size(); ++i) {
            if (f16) { const uint16_t h = f32_to_f16_bits(v[i]); memcpy(b.data() + 2*i, &h, 2); }
            else     { memcpy(b.data() + 4*i, &v[i], 4); }
        }
        return b;
    };

    { // contiguous: the whole base tensor
        dbuf dy(nbase*(f16 ? 2 : 4));
        if (f16) to_fp16(dq.ptr, (half *) dy.ptr, nbase, 0);
        else     to_fp32(dq.ptr, (float *) dy.ptr, nbase, 0);
        CUDA_CHECK(cudaGetLastError());
        const std::vector<uint8_t> got = dy.get<uint8_t>(), want = encode(all);
        check(same_bytes(got.data(), want.data(), want.size(), "converted"), "ggml_%s_to_%s_cuda, %lld values",
              tname, f16 ? "fp16" : "fp32", (long long) nbase);
    }
    { // non-contiguous view, strides in blocks
        const int64_t nbr = base0/QK_TQ;
        const int64_t s01 = nbr, s02 = nbr*base1, s03 = nbr*base1*ne2;
        std::vector<float> view;
        for (int64_t i3 = 0; i3 < ne3; ++i3)
            for (int64_t i2 = 0; i2 < ne2; ++i2)
                for (int64_t i1 = 0; i1 < ne1; ++i1)
                    for (int64_t i0 = 0; i0 < ne0; ++i0)
                        view.push_back(all[(i3*s03 + i2*s02 + i1*s01)*QK_TQ + i0]);
        dbuf dy(view.size()*(f16 ? 2 : 4));
        if (f16) to_fp16_nc(dq.ptr, (half *) dy.ptr, ne0, ne1, ne2, ne3, s01, s02, s03, 0);
        else     to_fp32_nc(dq.ptr, (float *) dy.ptr, ne0, ne1, ne2, ne3, s01, s02, s03, 0);
        CUDA_CHECK(cudaGetLastError());
        const std::vector<uint8_t> got = dy.get<uint8_t>(), want = encode(view);
        check(same_bytes(got.data(), want.data(), want.size(), "converted"), "ggml_%s_to_%s_nc_cuda, view [%lld,%lld,%lld,%lld] of [%lld,%lld,%lld,%lld]",
              tname, f16 ? "fp16" : "fp32", (long long) ne0, (long long) ne1, (long long) ne2, (long long) ne3,
              (long long) base0, (long long) base1, (long long) ne2, (long long) base3);
    }
}

int main() {
    int dev = 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

    std::mt19937 rng(1234);
    test_tables();
    test_nearest_index<4>();
    test_nearest_index<3>();
    test_nearest_index<2>();
    test_nearest_index<6>();
    test_codebook_lookup<4>();
    test_codebook_lookup<3>();
    test_codebook_lookup<2>();
    test_codebook_lookup<6>();
    test_block_helpers<4>(rng, GGML_TYPE_TQ4_0);
    test_block_helpers<3>(rng, GGML_TYPE_TQ3_0);
    test_block_helpers<2>(rng, GGML_TYPE_TQV2_0);
    test_block_helpers<6>(rng, GGML_TYPE_TQ6_0);
    test_rotation(rng);

    for (ggml_type type : { GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0, GGML_TYPE_TQV2_0, GGML_TYPE_TQ6_0 }) {
        for (ggml_type src_type : { GGML_TYPE_F32, GGML_TYPE_F16 }) {
            for (ggml_type idx_type : { GGML_TYPE_I64, GGML_TYPE_I32 }) {
                // a KV-cache write: [n_embd_gqa, n_tokens] rows into a [n_embd_gqa, kv_size] cache
                test_set_rows(rng, type, src_type, idx_type, 1024, 7, 1, 1, 1, 1, 64);
                // test-backend-ops' shapes: broadcast indices over dims 2 and 3
                test_set_rows(rng, type, src_type, idx_type, 256, 5, 3, 2, 1, 1, 9);
                test_set_rows(rng, type, src_type, idx_type, 256, 11, 2, 3, 2, 3, 17);
                test_set_rows(rng, type, src_type, idx_type, 192, 3, 4, 1, 2, 1, 5);
            }
        }
        for (ggml_type dst_type : { GGML_TYPE_F32, GGML_TYPE_F16 }) {
            test_get_rows(rng, type, dst_type, 256, 5, 4, 7);
            test_get_rows(rng, type, dst_type, 128, 13, 1, 3);
        }
        for (ggml_type ft : { GGML_TYPE_F32, GGML_TYPE_F16 }) {
            test_cpy_to_tq(rng, type, ft, {256, 3, 2, 4}, true,  {256, 2, 3, 4});
            test_cpy_to_tq(rng, type, ft, {256, 4, 4, 4}, false, {256, 4, 4, 4});
            test_cpy_to_tq(rng, type, ft, {32, 16, 2, 1}, false, {256, 4, 1, 1}); // src rows shorter than a block
            test_cpy_from_tq(rng, type, ft, {256, 2, 3, 4}, {256, 3, 2, 4}, true);
            test_cpy_from_tq(rng, type, ft, {256, 4, 4, 4}, {256, 4, 4, 4}, false);
            test_cpy_from_tq(rng, type, ft, {256, 4, 1, 1}, {32, 16, 2, 1}, false);
        }
        for (bool f16 : { true, false }) {
            // K cache of 3 KV heads of 128, 100 of 300 cells used, 2 streams
            test_convert(rng, type, f16, 128, 300, 2, 128, 100, 3, 2);
            test_convert(rng, type, f16, 256, 50, 1, 64, 50, 4, 1);
        }
    }

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed == 0 ? 0 : 1;
}
