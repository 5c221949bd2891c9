// Flash-attention decode over TQ K and V that scores on the int8 tensor cores: the kernel tq-fattn.cu
// runs for TQ V with TQ or q8_0 K at head 128 and 256 from TQ_FA_I8_MIN_KV keys on, when the cache layout allows
// (tq_fa_i8_layout); tq-fattn-mma-f16.cuh takes the rest. bench/cuda/fattn_bench.cu builds it alone, without
// ggml-cuda, for checks and timings.
//
// Its block structure: a block is the GQA groups of hb KV heads over one key range; whole token rows (a
// token's heads side by side in the cache) stream through a ring of shared-memory tiles with cp.async;
// tq_fattn_combine merges the key ranges (flash-decoding). Its inner loop, and why: below.
#pragma once

#include "tq-fattn-common.cuh"

#include <algorithm>
#include <type_traits>

#define TQ_I8_WARPS     4  // warps per block at most: one per KV head and query group
#define TQ_I8_TILE      16 // keys per mma tile: the k dimension of the P.V mma
#define TQ_I8_SUB       2  // mma tiles per iteration: one barrier, one softmax reduction, one rescale of O for both
#define TQ_I8_KT        (TQ_I8_SUB*TQ_I8_TILE) // keys per iteration and per shared-memory stage
#define TQ_I8_MIN_TILES 2  // a block's key range is at least this many stages: few keys spread over more blocks

// ---- helpers ----------------------------------------------------------------------------------------

static __device__ __forceinline__ void tq_fa_cp_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N> static __device__ __forceinline__ void tq_fa_cp_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#endif
}

// ---- parameters ----------------------------------------------------------------------------------------

// The node's (tq_fa_params), and how this kernel lays it out (tq_fa_i8_layout, tq_fa_i8_plan). A block's key
// range is one part of tq_fattn_combine's layout.
struct tq_fa_i8_params : tq_fa_params {
    int hb;                            // KV heads per block: a block's warps are its heads x groups
    int n_blocks, keys_per_block;      // key split: blocks per row, keys per block (a multiple of TQ_I8_KT)
    int cp_bytes;                      // cp.async size: 16, 8 or 4, what the addresses allow
    int span_K, span_V;                // bytes copied per key row: the block's heads, from the aligned word below
    int stride_K, stride_V;            // their row stride in shared memory
    int smem;                          // dynamic shared memory of the decode kernel
};

// The last step of a row, in a warp: O (rotated; lane l holds elements l and l+32 of block b in o_rot[b])
// times 1/L, rotated back.
template <int D>
static __device__ __forceinline__ void tq_fa_write_row(float * out, const float (&o_rot)[D/QK_TQ][2], float inv_L) {
#pragma unroll
    for (int b = 0; b < D/QK_TQ; ++b) {
        tq_fa_write_block(out + b*QK_TQ, o_rot[b][0], o_rot[b][1], inv_L);
    }
}

// cp.async of `bytes` (4, 8 or 16, known at compile time) to shared address d, `src_bytes` of them read and
// the rest zero-filled
static __device__ __forceinline__ void tq_fa_cp_to(uint32_t d, const void * src, const int bytes, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (bytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    } else if (bytes == 8) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    }
#else
    (void) d; (void) src; (void) bytes; (void) src_bytes;
    __trap();
#endif
}

// ---- the decode kernel ---------------------------------------------------------------------------------

// Shared memory of a block: tq_fa_stages(D) stages of [KT K rows | KT V rows | KT mask values], a K/V row
// holding the bytes of the block's heads for one key (contiguous in the cache: a token's heads side by side).
// After the loop the same memory holds each warp's rows of O for the final write.
#define TQ_I8_MASK_BYTES ((2*TQ_I8_KT + 4 + 15)/16*16) // KT halves from the 4-byte word below the first

// Stages of the ring: STAGES - 1 in flight while one is scored. Head 256 with 32-key stages keeps 2, so that
// three blocks still fit an SM's shared memory (the occupancy its registers are cut for, TQ_FA_I8_MINB).
static constexpr __host__ __device__ int tq_fa_stages(int D) {
    return TQ_I8_KT > 16 && D > 128 ? 2 : 3;
}

// ---- the inner loop: int8 tensor cores for S, V^T P^T for O ---------------------------------------------
//
// Per warp and 16-key tile the work is the lookups of 2 x 16 x D indices: with a shuffle per index and the
// per-index glue, about 1300 instructions. Here:
//   - a byte permute looks up 4 indices at once in a table held in registers (TQ4_0: 16 bytes, tq_fa_lut16,
//     11 instructions per 8 indices; TQ3_0: 8 bytes, tq_fa_lut8, 6 per 8; TQV2_0: 4 bytes, tq_fa_lut4, no third
//     bit to merge in), the table int8: K's centroids times a scale that keeps them in int8 (SK, below); Q
//     quantized to int8 per block of 64, so S = K Q^T runs on the int8 tensor cores (m16n8k32: 4 mma per tile
//     for head 128);
//   - V's table is 128 + that int8 value; a byte 0x64 above it makes the f16 number 1024 + byte, so two byte
//     permutes and a subtraction of 1152 (exact in f16: tq_fa_unbias) give an f16 operand register;
//   - O is accumulated transposed, O^T = V^T P^T: the mma's 16 rows are head dimensions (all used) and its 8
//     columns the query heads, where O = P V would use G of 16 rows; P^T comes from S's accumulator by
//     movmatrix (a transpose in registers);
//   - the dims of a block are taken in the order its aligned 4-byte words hold them (a dot product does not
//     care), so a lane reads whole words (tq_i8_fmt below: each format's word geometry).
// The price: the centroids in 8 bits (tq4_0: 0.37 % rms; tq3_0: 0.12 %; tqv2_0: 0.006 %) and Q in 8 bits
// (0.60 %), next to TQ4_0's own 9.3 % (bench/cuda/int8_scores.py).
//
// Takes: head 128 or 256 (blocks in pairs), TQ4_0, TQ3_0 and TQV2_0 as K and V or q8_0 K (tq_i8_fmt<GGML_TYPE_Q8_0>:
// its integers are the A operand as they are), rows 4-byte aligned, heads side by side in a key's row
// (tq_fa_i8_types and tq_fa_i8_layout say which); anything else stays with tq-fattn-mma-f16.cuh.
//
// TQ6_0, K or V, is not taken. Its 64 centroids as an int8 table are 16 registers (K's and V's: 32 of the 125 the
// kernel has at 3 blocks per SM), and a byte permute picks from 8 bytes: 4 indices would take 8 permutes over the
// register pairs and a tree of 7 on index bits 3-5, with their selectors and the 2 high bits merged in about 40
// instructions per 8 indices against TQ4_0's 11 (folding the symmetric table to 32 entries saves 8 permutes per
// 8 indices and adds a bytewise negation). And the rounding costs what the type is for: at the best scale
// (240.31) the 64 centroids round to int8 with 0.68 % rms error (0.80 % at 127/max|c|), about a quarter of
// TQ6_0's own 2.5 % (the square root of its codebook's 0.000616 MSE), where TQ4_0's 0.37 % is 4 % of its 9.3 %.
// The f16 kernel reads TQ6_0 exactly in f16, one shuffle per index (tq-fattn-mma-f16.cuh).

static __device__ __forceinline__ uint32_t tq_fa_prmt(uint32_t a, uint32_t b, uint32_t s) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
    return d;
}

static __device__ __forceinline__ uint32_t tq_fa_ld32(const uint8_t * p) {
    return *(const uint32_t *) p;
}

// The table bytes of the 8 4-bit indices in w: lo holds those of w's bytes 0, 1 and hi those of bytes 2, 3,
// each in nibble order (byte 0 low, byte 0 high, byte 1 low, byte 1 high). T: entries 0..15, 4 per register.
// A byte permute picks with the low 3 bits of a selector nibble (bit 3 would ask for sign replication, so
// it is masked): once from entries 0..7, once from 8..15, a third time between the two by the index's bit 3.
static __device__ __forceinline__ void tq_fa_lut16(uint32_t w, const uint32_t (&T)[4], uint32_t & lo, uint32_t & hi) {
    const uint32_t m  = w & 0x77777777u;
    const uint32_t s  = ((w >> 1) & 0x44444444u) | 0x32103210u;
    lo = tq_fa_prmt(tq_fa_prmt(T[0], T[1], m), tq_fa_prmt(T[2], T[3], m), s);
    const uint32_t mh = m >> 16, sh = s >> 16;
    hi = tq_fa_prmt(tq_fa_prmt(T[0], T[1], mh), tq_fa_prmt(T[2], T[3], mh), sh);
}

// The 8-entry table bytes of 16 3-bit TQ3_0 indices: those of qs word w (qs[4w..4w+3]: byte k holds the low 2
// bits of elements 4w+k+16m at bits 2m, m = 0..3) with the third bits from qh word w%2 (byte k, bit w/2 + 2m;
// sh = w/2). Two selector words: x02 (nibbles: elements (k, m=0), (k, m=2) for k = 0..3) and x13 (m = 1, 3);
// a byte permute of the table's 2 words looks up 4 indices: 12 instructions per 16, against 22 for TQ4_0.
// a[j][0]: elements (k, j), (k, j+2) for k = 0, 1; a[j][1]: the same for k = 2, 3 (j = 0, 1)
static __device__ __forceinline__ uint32_t tq_fa_sel3(uint32_t qs_part, uint32_t hc_part) {
    return (qs_part & 0x33333333u) | (hc_part & 0xccccccccu); // index bits 0-1 from qs, bit 2 from qh
}
// the half of tq_fa_lut8 that is a[p/2]: p = 0 gives elements m = 0, 2, p = 2 gives m = 1, 3
static __device__ __forceinline__ void tq_fa_lut8_half(uint32_t qs, uint32_t qh, int sh, int p, const uint32_t (&T)[2],
                                                       uint32_t & lo, uint32_t & hi) {
    const uint32_t hc = (qh >> sh) & 0x55555555u; // bit 2m of byte k: the third bit of element (k, m)
    const uint32_t x  = tq_fa_sel3(qs >> p, hc << (2 - p));
    lo = tq_fa_prmt(T[0], T[1], x);
    hi = tq_fa_prmt(T[0], T[1], x >> 16);
}
static __device__ __forceinline__ void tq_fa_lut8(uint32_t qs, uint32_t qh, int sh, const uint32_t (&T)[2], uint32_t (&a)[2][2]) {
    tq_fa_lut8_half(qs, qh, sh, 0, T, a[0][0], a[0][1]);
    tq_fa_lut8_half(qs, qh, sh, 2, T, a[1][0], a[1][1]);
}

// tq_fa_lut8 for the 2-bit TQV2_0 indices (tq3_0's qs without qh): the selector nibbles are the index bits
// alone, and a permute of the table's one word looks up 4 indices
static __device__ __forceinline__ void tq_fa_lut4_half(uint32_t qs, int p, uint32_t T, uint32_t & lo, uint32_t & hi) {
    const uint32_t x = (qs >> p) & 0x33333333u;
    lo = tq_fa_prmt(T, 0u, x);
    hi = tq_fa_prmt(T, 0u, x >> 16);
}
static __device__ __forceinline__ void tq_fa_lut4(uint32_t qs, uint32_t T, uint32_t (&a)[2][2]) {
    tq_fa_lut4_half(qs, 0, T, a[0][0], a[0][1]);
    tq_fa_lut4_half(qs, 2, T, a[1][0], a[1][1]);
}

// The tables, made by the compiler: the centroids as bytes round(c*SK) + offset, 4 per word; K's signed
// (offset 0), V's unsigned (offset 128). SK: of the scales that keep every centroid in int8, the one with the
// least rounding error weighted by how often each centroid is hit (tq4_0: 0.37 % rms against 0.67 % for
// 127/max|c|; tq3_0: 0.12 % against 0.38 %; tqv2_0: 0.006 % against 0.29 %; bench/cuda/int8_scores.py finds and
// prints them).
static constexpr float tq_fa_cb4_host[16] = TQ_CENTROIDS_4BIT_INIT;
static constexpr float tq_fa_cb3_host[8]  = TQ_CENTROIDS_3BIT_INIT;
static constexpr float tq_fa_cb2_host[4]  = TQ_CENTROIDS_2BIT_INIT;
static constexpr float tq_fa_abs(float x) { return x < 0.0f ? -x : x; }
static constexpr int tq_fa_round(float x) { return x >= 0.0f ? (int) (x + 0.5f) : -(int) (0.5f - x); }
static constexpr uint32_t tq_fa_table_word(const float * cb, float sk, int r, int offset) {
    uint32_t v = 0;
    for (int e = 0; e < 4; ++e) {
        v |= ((uint32_t) (tq_fa_round(cb[4*r + e]*sk) + offset) & 0xffu) << (8*e);
    }
    return v;
}

// qs byte k (0..3) of word widx (0..7) of a TQ4_0 block, in the order the lanes read them: the odd block of a
// pair starts on a word (its qs 4 bytes later), the even block 2 bytes into one: words 1..7 of the pair hold qs
// bytes 2..29, the eighth is put together from qs 0, 1 (pair word 0) and qs 30, 31 (pair word 8)
static __device__ __forceinline__ int tq_fa_qs_byte(int odd, int widx, int k) {
    if (odd) {
        return 4*widx + k;
    }
    return widx < 7 ? 4*widx + 2 + k : (k < 2 ? k : 28 + k);
}

// the TQ4_0 block element in byte j of tq_fa_lut16's lo (half 0) or hi (half 1) word for word widx
static __device__ __forceinline__ int tq_fa_elem(int odd, int widx, int half, int j) {
    return tq_fa_qs_byte(odd, widx, 2*half + (j >> 1)) + 32*(j & 1);
}

// Word widx of a TQ4_0 block pair's row p for a lane: the odd block's straight, the even block's from
// pair word widx + 1 or, for widx 7, from pair words 0 and 8 (off_e, sel_e: tq_fa_even_word)
static __device__ __forceinline__ uint32_t tq_fa_word_even(const uint8_t * pair, int off_e, uint32_t sel_e, uint32_t w8) {
    return tq_fa_prmt(tq_fa_ld32(pair + off_e), w8, sel_e);
}

static __device__ __forceinline__ void tq_fa_even_word(int widx, int & off, uint32_t & sel) {
    off = widx < 7 ? 4*(widx + 1) : 0;
    sel = widx < 7 ? 0x3210u : 0x5432u;
}

// the transpose of an 8x8 f16 matrix in the mma fragment layout (lane 4i + j holds row i, columns 2j, 2j+1)
static __device__ __forceinline__ uint32_t tq_fa_trans(uint32_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
#else
    (void) x;
    __trap();
    return 0;
#endif
}

static __device__ __forceinline__ float tq_fa_lo(uint32_t w) { return __half2float(__ushort_as_half((unsigned short) (w & 0xffffu))); }
static __device__ __forceinline__ float tq_fa_hi(uint32_t w) { return __half2float(__ushort_as_half((unsigned short) (w >> 16))); }

// ---- the formats in the kernel's terms -----------------------------------------------------------------
// Per type: PAIR (bytes of two blocks: a row of the loops), SK (the centroid scale), NT and the tables (table:
// K's signed, V's 128 + signed, NT words each), and for lane (g, t) of a warp, over one block pair (o: its block 0 or 1):
//   k_row:  the A operands of S = K Q^T for key row r: A[o][j][r][half] (mma j of the block; half 0: k columns
//           4t..4t+3, half 1: 16+4t..16+4t+3) and the blocks' scales dk[r][o][NS] (NS per block: 1, or one per
//           mma j for q8_0);
//   v_key:  the table bytes of V for one key: X[o][half], 4 dims each (byte j of half h: mma tile j of the
//           block, dim row g + 8h);
//   v_d:    the blocks' scales of one key;
//   q_pos:  where Q's element lane of a block goes: the byte offset in the block's 16 words of the B operand
//           (word 4t + 2j + half for lane t); element lane + 32 goes Q_HI bytes on (1 for the TQ formats, whose
//           qs byte holds both; 8 for q8_0, where it is in mma j = 1);
//   ROT:    whether the keys meet the rotated query (the TQ formats) or the query as given (q8_0);
//   elem:   the block element of byte j of X[o][half] for lane g (the order v_key reads them in).
// The dims of a block are taken in whatever order its bits are cheapest to read in: a dot product does not
// care, as long as Q (q_pos) and the output (elem) follow the same order.
template <ggml_type type> struct tq_i8_fmt;

template <> struct tq_i8_fmt<GGML_TYPE_TQ4_0> {
    // The indices are nibbles, 8 to a word: the odd block's words are aligned, the even block's 2 bytes off
    // (tq_fa_word_even). Lane t reads words 2t, 2t+1 of a block for S, lane g word g for V.
    static constexpr int   PAIR = 2*(int) sizeof(block_tq4_0);
    static constexpr int   NT   = 4;
    static constexpr float SK   = 368.28f;
    static constexpr int   NS   = 1;    // scales per block of 64
    static constexpr int   Q_HI = 1;    // q_pos of element lane + 32, from element lane's
    static constexpr bool  ROT  = true; // scored against the rotated query
    // the tables' words (scalars: a constexpr array could not be read in device code): K's 0..3, V's 4..7
    static constexpr uint32_t W0 = tq_fa_table_word(tq_fa_cb4_host, SK, 0, 0),   W1 = tq_fa_table_word(tq_fa_cb4_host, SK, 1, 0);
    static constexpr uint32_t W2 = tq_fa_table_word(tq_fa_cb4_host, SK, 2, 0),   W3 = tq_fa_table_word(tq_fa_cb4_host, SK, 3, 0);
    static constexpr uint32_t W4 = tq_fa_table_word(tq_fa_cb4_host, SK, 0, 128), W5 = tq_fa_table_word(tq_fa_cb4_host, SK, 1, 128);
    static constexpr uint32_t W6 = tq_fa_table_word(tq_fa_cb4_host, SK, 2, 128), W7 = tq_fa_table_word(tq_fa_cb4_host, SK, 3, 128);
    static __device__ __forceinline__ uint32_t table(bool v, int i) {
        const uint32_t w[2][NT] = { { W0, W1, W2, W3 }, { W4, W5, W6, W7 } };
        return w[v][i];
    }
    static_assert(tq_fa_round(tq_fa_abs(tq_fa_cb4_host[0])*SK) <= 127 && tq_fa_round(tq_fa_abs(tq_fa_cb4_host[15])*SK) <= 127,
                  "the centroids must fit int8");

    struct lane_t {
        int g8, t8, offKa, offKb, offV;
        uint32_t selKa, selKb, selV;
        __device__ lane_t(int g, int t) : g8(4*g), t8(8*t) {
            tq_fa_even_word(2*t,     offKa, selKa);
            tq_fa_even_word(2*t + 1, offKb, selKb);
            tq_fa_even_word(g,       offV,  selV);
        }
    };

    static __device__ __forceinline__ void k_row(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], int r,
                                                 uint32_t (&A)[2][2][2][2], float (&dk)[2][2][NS]) {
        const uint32_t w0 = tq_fa_ld32(pair), w8 = tq_fa_ld32(pair + 32);
        dk[r][0][0] = tq_fa_lo(w0);
        dk[r][1][0] = tq_fa_hi(w8);
        tq_fa_lut16(tq_fa_word_even(pair, l.offKa, l.selKa, w8), T, A[0][0][r][0], A[0][0][r][1]);
        tq_fa_lut16(tq_fa_word_even(pair, l.offKb, l.selKb, w8), T, A[0][1][r][0], A[0][1][r][1]);
        tq_fa_lut16(tq_fa_ld32(pair + 36 + l.t8), T, A[1][0][r][0], A[1][0][r][1]);
        tq_fa_lut16(tq_fa_ld32(pair + 40 + l.t8), T, A[1][1][r][0], A[1][1][r][1]);
    }
    static __device__ __forceinline__ void v_key(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], uint32_t (&X)[2][2]) {
        tq_fa_lut16(tq_fa_word_even(pair, l.offV, l.selV, tq_fa_ld32(pair + 32)), T, X[0][0], X[0][1]);
        tq_fa_lut16(tq_fa_ld32(pair + 36 + l.g8), T, X[1][0], X[1][1]);
    }
    static __device__ __forceinline__ void v_d(const uint8_t * pair, float (&d)[2]) {
        d[0] = tq_fa_lo(tq_fa_ld32(pair));
        d[1] = tq_fa_hi(tq_fa_ld32(pair + 32));
    }
    static __device__ __forceinline__ int q_pos(int odd, int lane) {
        int widx, k; // qs byte `lane` holds elements lane and lane + 32: byte k of word widx = 2t + j of lane t
        if (odd)            { widx = lane/4;       k = lane % 4; }
        else if (lane < 2)  { widx = 7;            k = lane; }
        else if (lane < 30) { widx = (lane - 2)/4; k = (lane - 2) % 4; }
        else                { widx = 7;            k = lane - 28; }
        return 4*(2*widx + k/2) + 2*(k % 2); // tq_fa_lut16: half k/2, bytes 2(k%2) (element lane) and + 1
    }
    static __device__ __forceinline__ int elem(int odd, int g, int half, int j) {
        return tq_fa_elem(odd, g, half, j);
    }
};

template <> struct tq_i8_fmt<GGML_TYPE_TQ3_0> {
    // A block is d, qs[16], qh[8] (26 bytes): in a pair the odd block's qs and qh start on words (bytes 28,
    // 44), the even block's 2 bytes into one (2, 18), put together by funnel shifts. Lane t reads qs word t and
    // qh word t%2 of a block for S (16 elements: tq_fa_lut8), lane g half of qs word g/2 for V (8 elements).
    static constexpr int   PAIR = 2*(int) sizeof(block_tq3_0);
    static constexpr int   NT   = 2;
    static constexpr float SK   = 458.04f;
    static constexpr int   NS   = 1, Q_HI = 1;
    static constexpr bool  ROT  = true;
    static constexpr uint32_t W0 = tq_fa_table_word(tq_fa_cb3_host, SK, 0, 0),   W1 = tq_fa_table_word(tq_fa_cb3_host, SK, 1, 0);
    static constexpr uint32_t W2 = tq_fa_table_word(tq_fa_cb3_host, SK, 0, 128), W3 = tq_fa_table_word(tq_fa_cb3_host, SK, 1, 128);
    static __device__ __forceinline__ uint32_t table(bool v, int i) { // K's (v false) or V's word i
        const uint32_t w[2][NT] = { { W0, W1 }, { W2, W3 } };
        return w[v][i];
    }
    static_assert(tq_fa_round(tq_fa_abs(tq_fa_cb3_host[0])*SK) <= 127 && tq_fa_round(tq_fa_abs(tq_fa_cb3_host[7])*SK) <= 127,
                  "the centroids must fit int8");

    struct lane_t {
        int kq, kh, ksh;     // S: qs word t, qh word t%2 (byte offsets), shift t/2
        int vq, vh, vsh, vp; // V: qs word g/2, qh word (g/2)%2, shift g/4, half 2(g%2) of tq_fa_lut8
        __device__ lane_t(int g, int t)
            : kq(4*t), kh(4*(t & 1)), ksh(t >> 1), vq(4*(g >> 1)), vh(4*((g >> 1) & 1)), vsh(g >> 2), vp(2*(g & 1)) {}
    };

    static __device__ __forceinline__ uint32_t qs_even(const uint8_t * pair, int off) {
        return __funnelshift_r(tq_fa_ld32(pair + off), tq_fa_ld32(pair + off + 4), 16);       // qs at byte 2
    }
    static __device__ __forceinline__ uint32_t qh_even(const uint8_t * pair, int off) {
        return __funnelshift_r(tq_fa_ld32(pair + 16 + off), tq_fa_ld32(pair + 20 + off), 16); // qh at byte 18
    }

    static __device__ __forceinline__ void k_row(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], int r,
                                                 uint32_t (&A)[2][2][2][2], float (&dk)[2][2][NS]) {
        dk[r][0][0] = tq_fa_lo(tq_fa_ld32(pair));
        dk[r][1][0] = tq_fa_hi(tq_fa_ld32(pair + 24));
        uint32_t a[2][2];
        tq_fa_lut8(qs_even(pair, l.kq), qh_even(pair, l.kh), l.ksh, T, a);
        A[0][0][r][0] = a[0][0]; A[0][0][r][1] = a[0][1]; A[0][1][r][0] = a[1][0]; A[0][1][r][1] = a[1][1];
        tq_fa_lut8(tq_fa_ld32(pair + 28 + l.kq), tq_fa_ld32(pair + 44 + l.kh), l.ksh, T, a);
        A[1][0][r][0] = a[0][0]; A[1][0][r][1] = a[0][1]; A[1][1][r][0] = a[1][0]; A[1][1][r][1] = a[1][1];
    }
    static __device__ __forceinline__ void v_key(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], uint32_t (&X)[2][2]) {
        tq_fa_lut8_half(qs_even(pair, l.vq), qh_even(pair, l.vh), l.vsh, l.vp, T, X[0][0], X[0][1]);
        tq_fa_lut8_half(tq_fa_ld32(pair + 28 + l.vq), tq_fa_ld32(pair + 44 + l.vh), l.vsh, l.vp, T, X[1][0], X[1][1]);
    }
    static __device__ __forceinline__ void v_d(const uint8_t * pair, float (&d)[2]) {
        d[0] = tq_fa_lo(tq_fa_ld32(pair));
        d[1] = tq_fa_hi(tq_fa_ld32(pair + 24));
    }
    static __device__ __forceinline__ int q_pos(int /*odd*/, int lane) {
        // element e = 4w + k + 16m (m = 0, 1; lane + 32 is m + 2): lane w, mma m, half k/2, byte 2(k%2) (+ 1)
        const int w = (lane % 16)/4, k = lane % 4, m = lane/16;
        return 4*(4*w + 2*m + k/2) + 2*(k % 2);
    }
    static __device__ __forceinline__ int elem(int /*odd*/, int g, int half, int j) {
        // lane g: qs word g/2, m = g%2 + 2(j%2), k = 2 half + j/2
        return 4*(g >> 1) + 2*half + (j >> 1) + 16*((g & 1) + 2*(j & 1));
    }
};

template <> struct tq_i8_fmt<GGML_TYPE_TQV2_0> {
    // A block is d, qs[16] (18 bytes), qs as tq3_0's: the same words, lanes and element order without the third
    // bits. In a pair the odd block's qs starts on a word (byte 20), the even block's 2 bytes into one (byte 2),
    // put together by a funnel shift. The table is 4 bytes, one word.
    typedef tq_i8_fmt<GGML_TYPE_TQ3_0> qs_order;
    static constexpr int   PAIR = 2*(int) sizeof(block_tqv2_0);
    static constexpr int   NT   = 1;
    static constexpr float SK   = 389.33f; // centroids 22 and 73
    static constexpr int   NS   = 1, Q_HI = 1;
    static constexpr bool  ROT  = true;
    static constexpr uint32_t W0 = tq_fa_table_word(tq_fa_cb2_host, SK, 0, 0), W1 = tq_fa_table_word(tq_fa_cb2_host, SK, 0, 128);
    static __device__ __forceinline__ uint32_t table(bool v, int /*i*/) { // K's (v false) or V's word
        return v ? W1 : W0;
    }
    static_assert(tq_fa_round(tq_fa_abs(tq_fa_cb2_host[0])*SK) <= 127 && tq_fa_round(tq_fa_abs(tq_fa_cb2_host[3])*SK) <= 127,
                  "the centroids must fit int8");

    struct lane_t {
        int kq;     // S: qs word t (byte offset)
        int vq, vp; // V: qs word g/2, half 2(g%2) of tq_fa_lut4
        __device__ lane_t(int g, int t) : kq(4*t), vq(4*(g >> 1)), vp(2*(g & 1)) {}
    };

    static __device__ __forceinline__ uint32_t qs_even(const uint8_t * pair, int off) {
        return __funnelshift_r(tq_fa_ld32(pair + off), tq_fa_ld32(pair + off + 4), 16); // qs at byte 2
    }

    static __device__ __forceinline__ void k_row(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], int r,
                                                 uint32_t (&A)[2][2][2][2], float (&dk)[2][2][NS]) {
        dk[r][0][0] = tq_fa_lo(tq_fa_ld32(pair));
        dk[r][1][0] = tq_fa_hi(tq_fa_ld32(pair + 16));
        uint32_t a[2][2];
        tq_fa_lut4(qs_even(pair, l.kq), T[0], a);
        A[0][0][r][0] = a[0][0]; A[0][0][r][1] = a[0][1]; A[0][1][r][0] = a[1][0]; A[0][1][r][1] = a[1][1];
        tq_fa_lut4(tq_fa_ld32(pair + 20 + l.kq), T[0], a);
        A[1][0][r][0] = a[0][0]; A[1][0][r][1] = a[0][1]; A[1][1][r][0] = a[1][0]; A[1][1][r][1] = a[1][1];
    }
    static __device__ __forceinline__ void v_key(const uint8_t * pair, const lane_t & l, const uint32_t (&T)[NT], uint32_t (&X)[2][2]) {
        tq_fa_lut4_half(qs_even(pair, l.vq), l.vp, T[0], X[0][0], X[0][1]);
        tq_fa_lut4_half(tq_fa_ld32(pair + 20 + l.vq), l.vp, T[0], X[1][0], X[1][1]);
    }
    static __device__ __forceinline__ void v_d(const uint8_t * pair, float (&d)[2]) {
        d[0] = tq_fa_lo(tq_fa_ld32(pair));
        d[1] = tq_fa_hi(tq_fa_ld32(pair + 16));
    }
    static __device__ __forceinline__ int q_pos(int odd, int lane) {
        return qs_order::q_pos(odd, lane);
    }
    static __device__ __forceinline__ int elem(int odd, int g, int half, int j) {
        return qs_order::elem(odd, g, half, j);
    }
};

template <> struct tq_i8_fmt<GGML_TYPE_Q8_0> {
    // Upstream's q8_0 as keys only (beside TQ values: the long-context pairing). Its 32 int8 values are an m16n8k32
    // A operand as they are, in their own order, with one scale per mma: no table, and the query unrotated
    // (upstream's Hadamard rotation, on for q8_0 caches, is already in Q and K). A block pair of the loop is 4
    // q8_0 blocks (136 bytes, on a word): blocks 1 and 3 hold their qs on words, blocks 0 and 2 two bytes into
    // one (put together by funnel shifts). Lane t reads qs bytes 4t..4t+3 and 16+4t.. of each block.
    static constexpr int   PAIR = 4*(int) sizeof(block_q8_0);
    static constexpr int   NT   = 1;    // no table (one unused word: the kernel's arrays are not empty)
    static constexpr float SK   = 1.0f; // the values are the integers themselves
    static constexpr int   NS   = 2;    // a scale per 32 dims
    static constexpr int   Q_HI = 8;    // element lane + 32 is in mma j = 1: two words on
    static constexpr bool  ROT  = false;
    static_assert(sizeof(block_q8_0) == 34 && QK8_0 == 32, "q8_0: a 2-byte scale and 32 int8 values");
    static __device__ __forceinline__ uint32_t table(bool /*v*/, int /*i*/) { return 0; }

    struct lane_t {
        int t4;
        __device__ lane_t(int /*g*/, int t) : t4(4*t) {}
    };

    static __device__ __forceinline__ void k_row(const uint8_t * pair, const lane_t & l, const uint32_t (&/*T*/)[NT], int r,
                                                 uint32_t (&A)[2][2][2][2], float (&dk)[2][2][NS]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) { // q8_0 block i: mma j = i%2 of the loop's block o = i/2
            const uint8_t * blk = pair + i*(int) sizeof(block_q8_0);
            if (i % 2 == 0) { // d on a word, qs two bytes into one
                dk[r][i/2][0] = tq_fa_lo(tq_fa_ld32(blk));
                A[i/2][0][r][0] = __funnelshift_r(tq_fa_ld32(blk + l.t4),      tq_fa_ld32(blk + l.t4 + 4),  16);
                A[i/2][0][r][1] = __funnelshift_r(tq_fa_ld32(blk + l.t4 + 16), tq_fa_ld32(blk + l.t4 + 20), 16);
            } else {          // d two bytes into a word, qs on words
                dk[r][i/2][1] = tq_fa_hi(tq_fa_ld32(blk - 2));
                A[i/2][1][r][0] = tq_fa_ld32(blk + 2 + l.t4);
                A[i/2][1][r][1] = tq_fa_ld32(blk + 18 + l.t4);
            }
        }
    }
    static __device__ __forceinline__ int q_pos(int /*odd*/, int lane) {
        // element e < 32 of a block of 64: mma j = 0, half e/16, lane t = (e%16)/4, byte e%4 (word 4t + 2j + half)
        return 4*(4*((lane % 16)/4) + lane/16) + lane % 4;
    }
};

#define TQ_I8_SLOTS(D) ((D)/64) // 16-byte copies per lane and row pair: 4 heads of K and V in 16-byte chunks

// f16 pair (1024 + b0, 1024 + b1) -> (b0 - 128, b1 - 128), exactly: the V operand from its table bytes. Taking
// the offset out at the end instead (O - 1152 sum(P)) saved this instruction but lost precision as the tensor
// cores accumulated 1152 sum(P) in f32: 1e-2 of the output at 300 keys per block (fattn_bench check).
static __device__ __forceinline__ uint32_t tq_fa_unbias(uint32_t x) {
    const half2 h = __hsub2(*(const half2 *) &x, __half2half2(__ushort_as_half(0x6480))); // 1152
    return *(const uint32_t *) &h;
}

// The last step of a row from its (M, L, O) over all keys (M in natural-log units): the sink, 1/L, rotated back.
// o: lane's elements lane and lane + 32 of each 64-block.
template <int D>
static __device__ __forceinline__ void tq_fa_finish_row(const tq_fa_i8_params & p, int z, int hq, float M, float L, float (&o)[D/QK_TQ][2]) {
    if (p.sinks && M != -INFINITY) {
        const float sink = p.sinks[hq];
        const float Mn = fmaxf(M, sink);
        const float a = expf(M - Mn);
        L = L*a + expf(sink - Mn);
#pragma unroll
        for (int b = 0; b < D/QK_TQ; ++b) {
            o[b][0] *= a;
            o[b][1] *= a;
        }
    }
    tq_fa_write_row<D>(p.dst + ((int64_t) z*p.n_head + hq)*D, o, L == 0.0f ? 0.0f : 1.0f/L);
}

// grid: x = key range (block), y = group of hb KV heads, z = query row + n_q * sequence. Warp w of the block
// takes KV head blockIdx.y*hb + w/n_groups, query heads of group w%n_groups: G columns of the n8 tile.
template <int D, ggml_type type_K, ggml_type type_V, int MINB>
__launch_bounds__(TQ_I8_WARPS*32, MINB)
static __global__ void tq_fattn_mma_i8(const tq_fa_i8_params p) {
    static_assert(D % (2*QK_TQ) == 0, "the kernel takes blocks in pairs");
    ggml_cuda_pdl_sync(); // launched early (ggml_cuda_kernel_launch): Q, K and V come from the kernels before
    ggml_cuda_pdl_lc();
    typedef tq_i8_fmt<type_K> fK;
    typedef tq_i8_fmt<type_V> fV;
    constexpr int NB = D/QK_TQ, NP = NB/2;
    constexpr int row_K = NP*fK::PAIR, row_V = NP*fV::PAIR;
    constexpr float LOG2E = 1.4426950408889634f;

    extern __shared__ __align__(16) uint8_t tq_fa_smem[];

    const int lane   = threadIdx.x & 31;
    const int warp   = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const int g      = lane >> 2;
    const int t      = lane & 3;

    const int kv0     = blockIdx.y*p.hb;
    const int kv_head = kv0 + warp / p.n_groups;
    const int group   = warp % p.n_groups;
    const int iq      = blockIdx.z % p.n_q;
    const int seq     = blockIdx.z / p.n_q;
    const int head0   = kv_head*p.gqa + group*p.G; // the warp's column c is query head head0 + c

    const int k_begin = blockIdx.x*p.keys_per_block;
    const int k_end   = min(k_begin + p.keys_per_block, p.n_kv);
    const int n_tiles = (k_end - k_begin + TQ_I8_KT - 1)/TQ_I8_KT; // iterations of KT keys
    constexpr int STAGES = tq_fa_stages(D);

    // rows start on a word here (tq_fa_i8_layout)
    const char * Ks = p.K + kv0*p.nbk2 + seq*p.nbk3;
    const char * Vs = p.V + kv0*p.nbv2 + seq*p.nbv3;
    const int endK = p.hb*row_K, endV = p.hb*row_V; // multiples of the copy size (tq_fa_i8_layout)
    const char * mrow = p.mask ? p.mask + iq*p.nbm1 + (seq % p.mask_ne3)*p.nbm3 : nullptr;
    const int offM = (int) ((uintptr_t) mrow & 3);
    const int stage_bytes = TQ_I8_KT*(p.stride_K + p.stride_V) + TQ_I8_MASK_BYTES;

    // Copies tile `tile` into stage `st`: warp w copies rows w, w + nwarps, ... of K and V. A row pair (the
    // block's heads of K, then of V) is nch chunks of cb = 16 or 8 bytes (tq_fa_i8_layout: at most 32*SLOTS);
    // lane l copies chunks l, l + 32, ...: where each goes is worked out once here, a copy then costs an
    // address and a cp.async. Keys at or past k_end are zero-filled without a read.
    constexpr int SLOTS = TQ_I8_SLOTS(D);
    const int cb = p.cp_bytes;
    const int nchK = endK/cb, nch = nchK + endV/cb;
    const char * src_s[SLOTS];
    uint32_t nb1_s[SLOTS];
    int dst_s[SLOTS], stride_s[SLOTS];
    bool on_s[SLOTS];
#pragma unroll
    for (int sl = 0; sl < SLOTS; ++sl) {
        const int q = lane + 32*sl;
        const bool isV = q >= nchK;
        const int col = cb*(isV ? q - nchK : q);
        on_s[sl]     = q < nch;
        src_s[sl]    = (isV ? Vs : Ks) + col;
        nb1_s[sl]    = (uint32_t) (isV ? p.nbv1 : p.nbk1);
        dst_s[sl]    = (isV ? TQ_I8_KT*p.stride_K : 0) + col;
        stride_s[sl] = isV ? p.stride_V : p.stride_K;
    }
    const uint32_t smem_base = (uint32_t) __cvta_generic_to_shared(tq_fa_smem);
    auto fetch_cb = [&](auto CB, const int tile, const int st) {
        constexpr int cbytes = decltype(CB)::value;
        const uint32_t stage = smem_base + st*stage_bytes;
        const int k0 = k_begin + tile*TQ_I8_KT;
        for (int r = warp; r < TQ_I8_KT; r += nwarps) {
            const int k = k0 + r;
            const int n = k < k_end ? cbytes : 0;
            const uint32_t kr = k < k_end ? k : 0; // a refused read still names a valid address
#pragma unroll
            for (int sl = 0; sl < SLOTS; ++sl) {
                if (on_s[sl]) {
                    tq_fa_cp_to(stage + dst_s[sl] + r*stride_s[sl], src_s[sl] + kr*nb1_s[sl], cbytes, n); // < 2^32: tq_fa_i8_layout
                }
            }
        }
        if (mrow && warp == nwarps - 1 && lane < TQ_I8_MASK_BYTES/4) {
            const uint32_t sm = stage + TQ_I8_KT*(p.stride_K + p.stride_V);
            const int valid = min(TQ_I8_KT, k_end - k0);
            const int nm = max(0, min(4, offM + 2*valid - 4*lane));
            tq_fa_cp_to(sm + 4*lane, nm ? mrow - offM + 2*(int64_t) k0 + 4*lane : mrow, 4, nm);
        }
    };
    auto fetch = [&](const int tile, const int st) {
        if (cb == 16) {
            fetch_cb(std::integral_constant<int, 16>(), tile, st);
        } else {
            fetch_cb(std::integral_constant<int, 8>(), tile, st);
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_tiles) {
            fetch(s, s);
        }
        tq_fa_cp_commit();
    }

    // ---- Q of the warp's G columns: rotated (not for q8_0 keys), scaled, rounded to int8 per block of 64 (scale amax/127), as the
    // B operand of S. Lane (g, t) holds column g at the dims of its K words (block b, word 2t + j, halves
    // 0/1 -> b0/b1). The lane that rotates element e of a block writes its int8 straight to that place:
    // elements lane and lane + 32 Q_HI bytes apart (TQ: side by side, qs byte lane holds both).
    __shared__ __align__(16) uint32_t q8_s[TQ_I8_WARPS][TQ_FA_MAX_G][NB][2][2][2][2]; // [col][b][t/2][t%2][j][half]
    __shared__ float qsc_s[TQ_I8_WARPS][TQ_FA_MAX_G][NB];
    const float q_scale = p.logit_softcap != 0.0f ? p.scale/p.logit_softcap : p.scale;
    if (lane < TQ_FA_MAX_G*NB) {
        qsc_s[warp][lane/NB][lane%NB] = 0.0f; // columns past G score 0 (their int8 Q is never set)
    }
    __syncwarp(); // before lane 0 sets the scales of columns below G
    // where elements lane and lane + 32 of an even / odd block go: byte offset in a column's [t][j][half] words
    int q8_pos[2];
#pragma unroll
    for (int odd = 0; odd < 2; ++odd) {
        q8_pos[odd] = fK::q_pos(odd, lane);
    }
    const float sign0 = tq_fa_signs[lane], sign1 = tq_fa_signs[lane + 32];
    // Columns in groups of QG, each group's QG x NB rotations as independent chains of shuffles that the
    // scheduler interleaves (one after another they were most of the kernel at depth 0): a group's columns
    // past G repeat column 0 and leave their scale 0, so their int8 Q is never used.
    constexpr int QG = NB == 2 ? 4 : 2; // 8 rotations at once (D = 256: 4 would need more registers than MINB allows)
#pragma unroll
    for (int gg0 = 0; gg0 < TQ_FA_MAX_G; gg0 += QG) {
        if (gg0 >= p.G) {
            break;
        }
        float qv[QG][NB][2]; // all loads first: one memory latency
#pragma unroll
        for (int u = 0; u < QG; ++u) {
            const int gg = gg0 + u < p.G ? gg0 + u : 0;
            const float * q = (const float *) (p.Q + iq*p.nbq1 + (head0 + gg)*p.nbq2 + seq*p.nbq3);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                qv[u][b][0] = q[b*QK_TQ + lane];
                qv[u][b][1] = q[b*QK_TQ + lane + 32];
                if constexpr (fK::ROT) {
                    qv[u][b][0] *= sign0;
                    qv[u][b][1] *= sign1;
                }
            }
        }
        if constexpr (fK::ROT) {
#pragma unroll
            for (int u = 0; u < QG; ++u) {
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    tq_cuda_fwht64_warp(qv[u][b][0], qv[u][b][1], lane);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < QG; ++u) {
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                const float v0 = qv[u][b][0]*(fK::ROT ? 0.125f*q_scale : q_scale); // the FWHT's 1/8
                const float v1 = qv[u][b][1]*(fK::ROT ? 0.125f*q_scale : q_scale);
                float amax = fmaxf(fabsf(v0), fabsf(v1));
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) {
                    amax = fmaxf(amax, __shfl_xor_sync(TQ_CUDA_FULL_MASK, amax, off));
                }
                const float inv = amax > 0.0f ? 127.0f/amax : 0.0f;
                const uint32_t i0 = (uint32_t) __float2int_rn(v0*inv) & 0xffu, i1 = (uint32_t) __float2int_rn(v1*inv) & 0xffu;
                uint8_t * qcol = (uint8_t *) q8_s[warp][gg0 + u][b] + q8_pos[b & 1];
                if constexpr (fK::Q_HI == 1) {
                    *(uint16_t *) qcol = (uint16_t) (i0 | i1 << 8);
                } else {
                    qcol[0]        = (uint8_t) i0;
                    qcol[fK::Q_HI] = (uint8_t) i1;
                }
                if (lane == 0 && gg0 + u < p.G) {
                    qsc_s[warp][gg0 + u][b] = amax/127.0f;
                }
            }
        }
    }
    __syncwarp();
    uint32_t qb[NB][2][2];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const uint4 w = *(const uint4 *) q8_s[warp][g][b][t/2][t%2][0];
        qb[b][0][0] = w.x; qb[b][0][1] = w.y; qb[b][1][0] = w.z; qb[b][1][1] = w.w;
    }
    // S's accumulator -> logit: times Q's block scale / sK (and log2 e: the softmax runs on exp2), times d
    const float s_unit = p.logit_softcap != 0.0f ? 1.0f/fK::SK : LOG2E/fK::SK;
    float qf[NB][2];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        qf[b][0] = qsc_s[warp][2*t][b]*s_unit;
        qf[b][1] = qsc_s[warp][2*t + 1][b]*s_unit;
    }
    const float cap_l2 = p.logit_softcap*LOG2E;
    float slope_l2[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        slope_l2[c] = 2*t + c < p.G ? get_alibi_slope(p.max_bias, head0 + 2*t + c, p.n_head_log2, p.m0, p.m1)*LOG2E : 0.0f;
    }

    // The tables, loaded from shared memory: a value that ptxas sees as the same in every lane it keeps in a
    // uniform register and copies into a regular one before every byte permute (~60 moves per tile)
    __shared__ __align__(16) uint32_t tab_s[TQ_I8_WARPS][fK::NT + fV::NT];
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < fK::NT; ++i) {
            tab_s[warp][i] = fK::table(false, i);
        }
#pragma unroll
        for (int i = 0; i < fV::NT; ++i) {
            tab_s[warp][fK::NT + i] = fV::table(true, i);
        }
    }
    __syncwarp();
    uint32_t TK[fK::NT], TV[fV::NT];
#pragma unroll
    for (int i = 0; i < fK::NT; ++i) {
        TK[i] = tab_s[warp][i];
    }
#pragma unroll
    for (int i = 0; i < fV::NT; ++i) {
        TV[i] = tab_s[warp][fK::NT + i];
    }
    const uint32_t C64 = 0x64646464u;

    // per-lane word addresses of the formats
    const typename fK::lane_t lnK(g, t);
    const typename fV::lane_t lnV(g, t);
    // this lane's rows in a stage (the warp's head in a row: (warp / n_groups)*row bytes): K rows g, g+8;
    // V rows g, g+8 (their d) and 2t, 2t+1, 2t+8, 2t+9 (the operand)
    const int offKw = (warp / p.n_groups)*row_K;
    const int offVw = TQ_I8_KT*p.stride_K + (warp / p.n_groups)*row_V;
    const int offKr[2] = { offKw + g*p.stride_K, offKw + (g + 8)*p.stride_K };
    const int offVd[2] = { offVw + g*p.stride_V, offVw + (g + 8)*p.stride_V };
    int offVk[4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        offVk[kk] = offVw + (2*t + (kk & 1) + 8*(kk >> 1))*p.stride_V;
    }

    // state of columns 2t, 2t+1: M, L (partial over this lane's keys, log2 units), O^T (rows g, g+8 of each
    // 16-dim mma tile)
    float M[2] = { -INFINITY, -INFINITY }, L[2] = { 0.0f, 0.0f };
    float O[NB][4][4];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            O[b][j][0] = O[b][j][1] = O[b][j][2] = O[b][j][3] = 0.0f;
        }
    }

    for (int it = 0; it < n_tiles; ++it) {
        tq_fa_cp_wait<STAGES - 2>();
        __syncthreads();
        if (it + STAGES - 1 < n_tiles) {
            fetch(it + STAGES - 1, (it + STAGES - 1) % STAGES);
        }
        tq_fa_cp_commit();

        const uint8_t * sk = tq_fa_smem + (it % STAGES)*stage_bytes;
        const half    * sm = (const half *) (sk + TQ_I8_KT*(p.stride_K + p.stride_V) + offM);
        const int k0 = k_begin + it*TQ_I8_KT;

        // ---- S = K Q^T per mma tile u (keys 16u + g, 16u + g + 8: rows), columns 2t, 2t+1; the tiles'
        // lookups and products are independent chains
        float s[TQ_I8_SUB][4];
#pragma unroll
        for (int u = 0; u < TQ_I8_SUB; ++u) {
            s[u][0] = s[u][1] = s[u][2] = s[u][3] = 0.0f;
#pragma unroll
            for (int pr = 0; pr < NP; ++pr) {
                uint32_t A[2][2][2][2];  // [odd block][word j][row g / g+8][half]
                float dk[2][2][fK::NS];  // [row][odd block][scale: one per block, or per mma j (q8_0)]
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    fK::k_row(sk + offKr[r] + u*TQ_I8_TILE*p.stride_K + pr*fK::PAIR, lnK, TK, r, A, dk);
                }
#pragma unroll
                for (int o = 0; o < 2; ++o) {
                    const int b = 2*pr + o;
                    // one integer sum per scale of K: both mma of a TQ block, each mma of q8_0's
#pragma unroll
                    for (int sc = 0; sc < fK::NS; ++sc) {
                        int acc[4] = { 0, 0, 0, 0 };
#pragma unroll
                        for (int j = sc; j < sc + 2/fK::NS; ++j) {
                            tq_fa_mma(acc, A[o][j][0][0], A[o][j][1][0], A[o][j][0][1], A[o][j][1][1], qb[b][j][0], qb[b][j][1]);
                        }
                        s[u][0] += (float) acc[0]*(dk[0][o][sc]*qf[b][0]);
                        s[u][1] += (float) acc[1]*(dk[0][o][sc]*qf[b][1]);
                        s[u][2] += (float) acc[2]*(dk[1][o][sc]*qf[b][0]);
                        s[u][3] += (float) acc[3]*(dk[1][o][sc]*qf[b][1]);
                    }
                }
            }
        }

        // ---- online softmax (log2 units) of columns 2t, 2t+1 over keys 16u + g, 16u + g + 8, then across the
        // 8 lanes of t: one reduction for the KT keys
        float mx[2] = { -INFINITY, -INFINITY };
#pragma unroll
        for (int u = 0; u < TQ_I8_SUB; ++u) {
            if (p.logit_softcap != 0.0f) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    s[u][i] = cap_l2*tanhf(s[u][i]);
                }
            }
            if (mrow) {
                const float m0 = __half2float(sm[16*u + g]), m1 = __half2float(sm[16*u + g + 8]);
                s[u][0] += slope_l2[0]*m0;
                s[u][1] += slope_l2[1]*m0;
                s[u][2] += slope_l2[0]*m1;
                s[u][3] += slope_l2[1]*m1;
            }
            if (k0 + TQ_I8_KT > k_end) {
                if (k0 + 16*u + g >= k_end)     { s[u][0] = s[u][1] = -INFINITY; }
                if (k0 + 16*u + g + 8 >= k_end) { s[u][2] = s[u][3] = -INFINITY; }
            }
            mx[0] = fmaxf(mx[0], fmaxf(s[u][0], s[u][2]));
            mx[1] = fmaxf(mx[1], fmaxf(s[u][1], s[u][3]));
        }
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            mx[0] = fmaxf(mx[0], __shfl_xor_sync(TQ_CUDA_FULL_MASK, mx[0], off));
            mx[1] = fmaxf(mx[1], __shfl_xor_sync(TQ_CUDA_FULL_MASK, mx[1], off));
        }
        float alpha[2], pe[TQ_I8_SUB][4];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            const float Mn = fmaxf(M[c], mx[c]);
            const float Ms = Mn == -INFINITY ? 0.0f : Mn; // nothing visible yet: every p and alpha is 0
            alpha[c] = exp2f(M[c] - Ms);
            float sum = 0.0f;
#pragma unroll
            for (int u = 0; u < TQ_I8_SUB; ++u) {
                pe[u][c]     = exp2f(s[u][c] - Ms);
                pe[u][c + 2] = exp2f(s[u][c + 2] - Ms);
                sum += pe[u][c] + pe[u][c + 2];
            }
            L[c] = L[c]*alpha[c] + sum;
            M[c] = Mn;
        }
        const bool rescale = __any_sync(TQ_CUDA_FULL_MASK, alpha[0] != 1.0f || alpha[1] != 1.0f);

        // ---- O^T += V^T P^T, tile by tile and block by block (P scaled by the block's d of each key)
#pragma unroll
        for (int u = 0; u < TQ_I8_SUB; ++u) {
#pragma unroll
            for (int pr = 0; pr < NP; ++pr) {
                const int offu = u*TQ_I8_TILE*p.stride_V + pr*fV::PAIR;
                float dv[2][2]; // keys 16u + g, 16u + g + 8: [row][odd block]
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    fV::v_d(sk + offVd[r] + offu, dv[r]);
                }
                uint32_t X[4][2][2]; // keys 2t, 2t+1, 2t+8, 2t+9 of the tile: [key][odd block][half]
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    fV::v_key(sk + offVk[kk] + offu, lnV, TV, X[kk]);
                }
#pragma unroll
                for (int o = 0; o < 2; ++o) {
                    const int b = 2*pr + o;
                    const half2 ht = __floats2half2_rn(pe[u][0]*dv[0][o], pe[u][1]*dv[0][o]); // key g,   columns 2t, 2t+1
                    const half2 hb = __floats2half2_rn(pe[u][2]*dv[1][o], pe[u][3]*dv[1][o]); // key g+8
                    const uint32_t b0 = tq_fa_trans(*(const uint32_t *) &ht); // P^T: keys 2t, 2t+1 of column g
                    const uint32_t b1 = tq_fa_trans(*(const uint32_t *) &hb); // keys 2t+8, 2t+9
                    uint32_t Z[2][2][2]; // [keys 2t,2t+1 / 2t+8,2t+9][half][bytes 0,1 / 2,3]: the two keys' bytes interleaved
#pragma unroll
                    for (int kp = 0; kp < 2; ++kp) {
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            Z[kp][hf][0] = tq_fa_prmt(X[2*kp][o][hf], X[2*kp + 1][o][hf], 0x5140u);
                            Z[kp][hf][1] = tq_fa_prmt(X[2*kp][o][hf], X[2*kp + 1][o][hf], 0x7362u);
                        }
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const uint32_t sel = (j & 1) ? 0x4342u : 0x4140u;
                        const uint32_t a0 = tq_fa_unbias(tq_fa_prmt(Z[0][0][j >> 1], C64, sel)); // dim row g   (half 0, byte j), keys 2t, 2t+1
                        const uint32_t a1 = tq_fa_unbias(tq_fa_prmt(Z[0][1][j >> 1], C64, sel)); // dim row g+8 (half 1, byte j)
                        const uint32_t a2 = tq_fa_unbias(tq_fa_prmt(Z[1][0][j >> 1], C64, sel)); // dim row g,   keys 2t+8, 2t+9
                        const uint32_t a3 = tq_fa_unbias(tq_fa_prmt(Z[1][1][j >> 1], C64, sel));
                        if (u == 0 && rescale) {
                            O[b][j][0] *= alpha[0];
                            O[b][j][1] *= alpha[1];
                            O[b][j][2] *= alpha[0];
                            O[b][j][3] *= alpha[1];
                        }
                        tq_fa_mma(O[b][j], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        }
    }
    tq_fa_cp_wait<0>();

    // ---- L summed over the 8 lanes of a column; O^T to O: O/sK
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            L[c] += __shfl_xor_sync(TQ_CUDA_FULL_MASK, L[c], off);
        }
    }
    const float inv_sV = 1.0f/fV::SK;
    // a column's row: the block's partial result in global memory, or with one block per row in shared memory
    // for the final write
    float * orow = (float *) tq_fa_smem + warp*TQ_FA_MAX_G*(D + 2);
    const bool rows_in_smem = p.n_blocks == 1;
    if (rows_in_smem) {
        __syncthreads(); // the stages are reused
    }
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        const int col = 2*t + c;
        if (col >= p.G) {
            continue;
        }
        const float Mn = M[c]*0.6931471805599453f; // natural-log units for the merge
        float * row; // O
        if (!rows_in_smem) {
            const int64_t i = ((int64_t) blockIdx.z*p.n_head + head0 + col)*p.n_blocks + blockIdx.x;
            if (g == 0) {
                p.meta[i] = make_float2(Mn, L[c]);
            }
            row = p.parts + i*D;
        } else {
            float * ml = orow + col*(D + 2);
            if (g == 0) {
                ml[0] = Mn;
                ml[1] = L[c];
            }
            row = ml + 2;
        }
#pragma unroll
        for (int b = 0; b < NB; ++b) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                row[b*QK_TQ + fV::elem(b & 1, g, 0, j)] = O[b][j][c]*inv_sV;
                row[b*QK_TQ + fV::elem(b & 1, g, 1, j)] = O[b][j][2 + c]*inv_sV;
            }
        }
    }
    if (!rows_in_smem) {
        return;
    }
    __syncwarp();
    for (int gg = 0; gg < p.G; ++gg) {
        const float * r = orow + gg*(D + 2);
        float o[NB][2];
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            o[b][0] = r[2 + b*QK_TQ + lane];
            o[b][1] = r[2 + b*QK_TQ + lane + 32];
        }
        tq_fa_finish_row<D>(p, blockIdx.z, head0 + gg, r[0], r[1], o);
    }
}


// ---- host side -----------------------------------------------------------------------------------------

// Blocks per SM the kernel is compiled for (__launch_bounds__): 3 leaves 125 registers, no spills (ptxas), and
// was the fastest of 2, 3 and 4 at 32k keys.
#define TQ_FA_I8_MINB 3

#define TQ_I8_MAX_SMEM (160*1024)

typedef void (*tq_fa_i8_kernel_t)(const tq_fa_i8_params);

// Dynamic shared memory a block of the kernel may have on the current device: TQ_I8_MAX_SMEM where the device
// allows that much (Hopper, A100: 227 and 163 KB), its opt-in limit where it allows less (about 99 KB on the
// consumer Ampere/Ada parts), so that tq_fa_i8_layout refuses a plan the launch could not take.
static int tq_fa_i8_max_smem() {
    static int limit[GGML_CUDA_MAX_DEVICES] = {};
    const int dev = ggml_cuda_get_device();
    if (limit[dev] == 0) {
        int optin = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        limit[dev] = std::min(optin, TQ_I8_MAX_SMEM);
    }
    return limit[dev];
}

template <int D, ggml_type type_K, ggml_type type_V, int MINB>
static tq_fa_i8_kernel_t tq_fa_i8_get() {
    const tq_fa_i8_kernel_t k = tq_fattn_mma_i8<D, type_K, type_V, MINB>;
    static bool smem_set[GGML_CUDA_MAX_DEVICES] = {}; // without it a block gets 48 KB, static memory included
    const int dev = ggml_cuda_get_device();
    if (!smem_set[dev]) {
        CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, tq_fa_i8_max_smem()));
        smem_set[dev] = true;
    }
    return k;
}

template <int D, ggml_type type_K, int MINB>
static tq_fa_i8_kernel_t tq_fa_i8_get_v(ggml_type tv) {
    switch (tv) {
        case GGML_TYPE_TQ4_0:  return tq_fa_i8_get<D, type_K, GGML_TYPE_TQ4_0,  MINB>();
        case GGML_TYPE_TQ3_0:  return tq_fa_i8_get<D, type_K, GGML_TYPE_TQ3_0,  MINB>();
        case GGML_TYPE_TQV2_0: return tq_fa_i8_get<D, type_K, GGML_TYPE_TQV2_0, MINB>();
        default:               return nullptr;
    }
}

template <int D, int MINB>
static tq_fa_i8_kernel_t tq_fa_i8_get_types(ggml_type tk, ggml_type tv) {
    switch (tk) {
        case GGML_TYPE_Q8_0:   return tq_fa_i8_get_v<D, GGML_TYPE_Q8_0,   MINB>(tv);
        case GGML_TYPE_TQ4_0:  return tq_fa_i8_get_v<D, GGML_TYPE_TQ4_0,  MINB>(tv);
        case GGML_TYPE_TQ3_0:  return tq_fa_i8_get_v<D, GGML_TYPE_TQ3_0,  MINB>(tv);
        case GGML_TYPE_TQV2_0: return tq_fa_i8_get_v<D, GGML_TYPE_TQV2_0, MINB>(tv);
        default:               return nullptr;
    }
}

// The K and V types the kernel takes (the inner loop's comment says why not TQ6_0); tq-fattn.cu gives the others to
// tq-fattn-mma-f16.cuh.
static inline bool tq_fa_i8_types(ggml_type tk, ggml_type tv) {
    const auto table_type = [](ggml_type t) {
        return t == GGML_TYPE_TQ4_0 || t == GGML_TYPE_TQ3_0 || t == GGML_TYPE_TQV2_0;
    };
    return (table_type(tk) || tk == GGML_TYPE_Q8_0) && table_type(tv);
}

// The kernel for head size D and types of tq_fa_i8_types, compiled for MINB blocks per SM; heads 128 and 256 only:
// anything else gets none (and tq_fa_i8_layout refuses it).
template <int MINB = TQ_FA_I8_MINB>
static tq_fa_i8_kernel_t tq_fa_i8_select(int D, ggml_type tk, ggml_type tv) {
    if (!tq_fa_i8_types(tk, tv) || (D != 128 && D != 256)) {
        return nullptr;
    }
    return D == 128 ? tq_fa_i8_get_types<128, MINB>(tk, tv) : tq_fa_i8_get_types<256, MINB>(tk, tv);
}

static int tq_fa_row_bytes(ggml_type t, int D) {
    switch (t) {
        case GGML_TYPE_TQ4_0:  return D/QK_TQ*(int) sizeof(block_tq4_0);
        case GGML_TYPE_TQ3_0:  return D/QK_TQ*(int) sizeof(block_tq3_0);
        case GGML_TYPE_TQV2_0: return D/QK_TQ*(int) sizeof(block_tqv2_0);
        case GGML_TYPE_Q8_0:   return D/QK8_0*(int) sizeof(block_q8_0);
        default:               return 0;
    }
}

// Heads per block and the copy layout, from the tensors' addresses and strides (p's tq_fa_params set).
// Returns false where the kernel cannot take them: query heads in more groups than a block has warps, a
// head's rows not 4-byte aligned, or heads not side by side in a key's row.
static bool tq_fa_i8_layout(tq_fa_i8_params & p, int D, ggml_type tk, ggml_type tv) {
    if (p.n_groups > TQ_I8_WARPS || !tq_fa_i8_types(tk, tv) || D % (2*QK_TQ) != 0 ||
        (uintptr_t) p.K % 4 != 0 || (uintptr_t) p.V % 4 != 0) {
        return false; // its K and V types, blocks in pairs, rows on 4-byte boundaries (nb1, nb3 below)
    }
    const int row_K = tq_fa_row_bytes(tk, D), row_V = tq_fa_row_bytes(tv, D);
    if (p.nbk2 != row_K || p.nbv2 != row_V || p.nbk1 % 4 != 0 || p.nbv1 % 4 != 0 ||
        p.nbk3 % 4 != 0 || p.nbv3 % 4 != 0 || (uintptr_t) p.K % 2 != 0 || (uintptr_t) p.V % 2 != 0) {
        return false;
    }
    p.hb = 1;  // the largest divisor of n_head_kv that fits the block
    for (int d = 1; d <= p.n_head_kv; ++d) {
        if (p.n_head_kv % d == 0 && d*p.n_groups <= TQ_I8_WARPS) {
            p.hb = d;
        }
    }
    // the widest copy every row start of every block allows: row starts are (base + kv0*nb2 + k*nb1 + seq*nb3)
    // rounded down to 4 bytes, kv0 a multiple of hb
    p.cp_bytes = 4;
    for (int cb : {16, 8}) {
        auto ok = [&](const char * base, int64_t nb1, int64_t nb2, int64_t nb3) {
            return ((uintptr_t) base & ~(uintptr_t) 3) % cb == 0 && nb1 % cb == 0 && nb3 % cb == 0 && (p.hb*nb2) % cb == 0 &&
                   (uintptr_t) base % 4 == 0;
        };
        if (ok(p.K, p.nbk1, p.nbk2, p.nbk3) && ok(p.V, p.nbv1, p.nbv2, p.nbv3)) {
            p.cp_bytes = cb;
            break;
        }
    }
    if (p.cp_bytes < 8 || (p.hb*row_K) % p.cp_bytes != 0 || (p.hb*row_V) % p.cp_bytes != 0 ||
        p.hb*(row_K + row_V)/p.cp_bytes > 32*TQ_I8_SLOTS(D)) {
        return false; // whole rows are copied in chunks of 16 or 8 bytes, at most TQ_I8_SLOTS per lane
    }
    if ((uint64_t) p.n_kv*std::max(p.nbk1, p.nbv1) >= (1ull << 32)) {
        return false; // the kernel's key offsets are 32-bit
    }
    // a row of the stage: up to 2 bytes of offset, the heads, rounded to the copy size; its stride 16 bytes
    // mod 32 (4 mod 8 words): the K fragment reads of 8 consecutive rows and the V reads of 4 even rows
    // then fall on different banks
    auto stride = [&](int span) {
        int st = (span + 15)/16*16;
        return (st/4) % 8 == 4 ? st : st + 16;
    };
    p.span_K = (2 + p.hb*row_K + p.cp_bytes - 1)/p.cp_bytes*p.cp_bytes;
    p.span_V = (2 + p.hb*row_V + p.cp_bytes - 1)/p.cp_bytes*p.cp_bytes;
    p.stride_K = stride(p.span_K);
    p.stride_V = stride(p.span_V);
    const int ring = tq_fa_stages(D)*(TQ_I8_KT*(p.stride_K + p.stride_V) + TQ_I8_MASK_BYTES);
    const int orows = TQ_I8_WARPS*TQ_FA_MAX_G*(D + 2)*(int) sizeof(float);
    p.smem = std::max(ring, orows);
    return p.smem <= tq_fa_i8_max_smem();
}

// Blocks of kernel k one SM holds at once.
static int tq_fa_i8_blocks_per_sm(tq_fa_i8_kernel_t k, const tq_fa_i8_params & p) {
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, p.hb*p.n_groups*32, p.smem);
    return std::max(1, per_sm);
}

// A key split (flash-decoding) of about blocks_per_sm blocks per SM in all, after tq_fa_i8_layout: at least
// TQ_I8_MIN_TILES stages per block, at most TQ_FA_COMBINE_MAX_PARTS blocks per row, key ranges whole stages.
static void tq_fa_i8_split(tq_fa_i8_params & p, int blocks_per_sm, int nsm) {
    const int rows       = p.n_head_kv/p.hb*p.n_q*p.n_seq; // blocks that share nothing
    const int max_blocks = std::min(std::max(1, p.n_kv/(TQ_I8_MIN_TILES*TQ_I8_KT)), TQ_FA_COMBINE_MAX_PARTS);
    const int n_want     = std::max(1, std::min(blocks_per_sm*nsm/rows, max_blocks));
    p.keys_per_block = ((p.n_kv + n_want - 1)/n_want + TQ_I8_KT - 1)/TQ_I8_KT*TQ_I8_KT;
    p.n_blocks       = (p.n_kv + p.keys_per_block - 1)/p.keys_per_block;
}

// The key split the kernel runs with. The blocks resident on an SM share its issue slots, so a split takes about
// as long as its busiest SM: ceil(blocks/nsm) blocks, each its stages of keys plus a fixed part (rounding the
// query, filling the ring, writing its partial result) worth about half a stage. Of the splits into about 1 ..
// blocks_per_sm blocks per SM (one wave: a second, partial one would double the time), the plan takes the
// cheapest by that count, counted 1.5x where the busiest SM has fewer than 6 warps, too few to hide each other's
// latency. H200, head 128, 8 KV heads, GQA 4, 32k keys: 256 blocks of 256 keys (2 per SM) take 26.9 µs, 342 of
// 192 (3 on most SMs) 30.1, 128 of 512 (4 warps per SM) 30.6; the plan used to fill every block slot and took
// the second (docs/cuda.md, "Key splits").
static void tq_fa_i8_plan(tq_fa_i8_params & p, int blocks_per_sm, int nsm) {
    const int rows  = p.n_head_kv/p.hb*p.n_q*p.n_seq;
    const int warps = p.hb*p.n_groups; // per block
    float best = INFINITY;
    for (int k = 1; k <= blocks_per_sm; ++k) {
        tq_fa_i8_params q = p;
        tq_fa_i8_split(q, k, nsm);
        const int on_sm  = (q.n_blocks*rows + nsm - 1)/nsm; // blocks on the busiest SM
        const float cost = on_sm*((float) q.keys_per_block/TQ_I8_KT + 0.5f)*(on_sm*warps < 6 ? 1.5f : 1.0f);
        if (cost < best) {
            best = cost;
            p.keys_per_block = q.keys_per_block;
            p.n_blocks       = q.n_blocks;
        }
    }
}

// Runs kernel k for a plan of tq_fa_i8_plan: with several blocks per row into p.parts and p.meta (n_blocks
// rows per query row and head), then their merge; with one, straight into p.dst.
static void tq_fa_i8_launch(const tq_fa_i8_params & p, tq_fa_i8_kernel_t k, int D, cudaStream_t stream) {
    const dim3 grid(p.n_blocks, p.n_head_kv/p.hb, p.n_q*p.n_seq);
    ggml_cuda_kernel_launch(k, {grid, dim3(p.hb*p.n_groups*32), p.smem, stream}, p);
    if (p.n_blocks > 1) {
        tq_fa_combine(p, D, p.n_blocks, stream);
    }
}
