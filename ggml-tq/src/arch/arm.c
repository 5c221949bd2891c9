// TQ kernels for AArch64 NEON: 64 values = 16 float32x4, centroid lookups with vqtbl on the
// codebook's bytes.
#include "tq-cpu.h"
#include "tq-codebook.h"

#if defined(TQ_CPU_ARM)

#include <arm_neon.h>

TQ_INLINE float tq_h2f(tq_half h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

TQ_INLINE float32x4_t tq_sign(int i) { return vld1q_f32(tq_signs + 4*i); }

// ---- transform and centroid lookups -------------------------------------------------------------

// one butterfly stage inside a register: s = v with partners swapped, neg = the sign bit in the
// lanes holding j+h: lower lanes get b+a, upper lanes a+(-b)
TQ_INLINE float32x4_t tq_bfly(float32x4_t v, float32x4_t s, uint32x4_t neg) {
    return vaddq_f32(s, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(v), neg)));
}

static const uint32_t tq_neg_lanes[8] = { 0, 0x80000000u, 0, 0x80000000u, 0, 0, 0x80000000u, 0x80000000u };

TQ_INLINE void tq_fwht64_neon(float32x4_t * v) {
    const uint32x4_t n1 = vld1q_u32(tq_neg_lanes);
    const uint32x4_t n2 = vld1q_u32(tq_neg_lanes + 4);
    for (int i = 0; i < 16; ++i) {
        v[i] = tq_bfly(v[i], vrev64q_f32(v[i]), n1);          // h = 1
        v[i] = tq_bfly(v[i], vextq_f32(v[i], v[i], 2), n2);   // h = 2
    }
    for (int h = 1; h < 16; h <<= 1) {                         // h = 4 .. 32
        for (int i = 0; i < 16; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float32x4_t a = v[j], b = v[j + h];
                v[j]     = vaddq_f32(a, b);
                v[j + h] = vsubq_f32(a, b);
            }
        }
    }
}

static const uint8_t tq_tbl_sel[80] = {
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
    4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11,
    12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15,
    0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
};

// byte offsets into a float table for 16 indices: out g covers indices 4g..4g+3
TQ_INLINE void tq_byte_idx(uint8x16_t idx, uint8x16_t * out) {
    const uint8x16_t i4  = vshlq_n_u8(idx, 2);
    const uint8x16_t off = vld1q_u8(tq_tbl_sel + 64);
    for (int g = 0; g < 4; ++g) {
        out[g] = vorrq_u8(vqtbl1q_u8(i4, vld1q_u8(tq_tbl_sel + 16*g)), off);
    }
}

// the centroids of 16 indices, c[g] = those of indices 4g..4g+3
TQ_INLINE void tq4_lookup(uint8x16_t idx, float32x4_t * c) {
    const uint8_t * p = (const uint8_t *) tq_centroids_4bit;
    const uint8x16x4_t cb = { { vld1q_u8(p), vld1q_u8(p + 16), vld1q_u8(p + 32), vld1q_u8(p + 48) } };
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        c[g] = vreinterpretq_f32_u8(vqtbl4q_u8(cb, bi[g]));
    }
}

TQ_INLINE void tq3_lookup(uint8x16_t idx, float32x4_t * c) {
    const uint8_t * p = (const uint8_t *) tq_centroids_3bit;
    const uint8x16x2_t cb = { { vld1q_u8(p), vld1q_u8(p + 16) } };
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        c[g] = vreinterpretq_f32_u8(vqtbl2q_u8(cb, bi[g]));
    }
}

TQ_INLINE void tqv2_lookup(uint8x16_t idx, float32x4_t * c) {
    const uint8x16_t cb = vld1q_u8((const uint8_t *) tq_centroids_2bit);
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        c[g] = vreinterpretq_f32_u8(vqtbl1q_u8(cb, bi[g]));
    }
}

// 64 floats are 256 bytes, four tables of vqtbl4: each byte offset is looked up in the table it falls in, and
// vqtbx leaves the lanes outside its table as they are. Index bits 6 and 7 are don't-care (tq_byte_idx drops them).
TQ_INLINE void tq6_lookup(uint8x16_t idx, float32x4_t * c) {
    const uint8_t * p = (const uint8_t *) tq_centroids_6bit;
    uint8x16x4_t cb[4];
    for (int m = 0; m < 4; ++m) {
        for (int k = 0; k < 4; ++k) {
            cb[m].val[k] = vld1q_u8(p + 64*m + 16*k);
        }
    }
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        uint8x16_t r = vqtbl4q_u8(cb[0], bi[g]);
        for (int m = 1; m < 4; ++m) {
            r = vqtbx4q_u8(r, cb[m], vsubq_u8(bi[g], vdupq_n_u8((uint8_t)(64*m))));
        }
        c[g] = vreinterpretq_f32_u8(r);
    }
}

// the centroids of a block: c[i] holds values 4i..4i+3; the 64 indices as 4 vectors of 16 bytes,
// value 16i+l in lane l of idx[i]
TQ_INLINE void tq4_decode(const void * blk, float32x4_t * c) {
    const block_tq4_0 * b = blk;
    const uint8x16_t lo = vld1q_u8(b->qs), hi = vld1q_u8(b->qs + 16), m = vdupq_n_u8(0x0f);
    tq4_lookup(vandq_u8(lo, m),   c);
    tq4_lookup(vandq_u8(hi, m),   c + 4);
    tq4_lookup(vshrq_n_u8(lo, 4), c + 8);
    tq4_lookup(vshrq_n_u8(hi, 4), c + 12);
}

TQ_INLINE void tq3_decode(const void * blk, float32x4_t * c) {
    const block_tq3_0 * b = blk;
    const uint8x16_t qs = vld1q_u8(b->qs);
    const uint8x8_t  h8 = vld1_u8(b->qh);
    const uint8x16_t qh = vcombine_u8(h8, vshr_n_u8(h8, 1)); // lane l of value 16k+l: third bit at bit 2k
    const uint8x16_t m3 = vdupq_n_u8(3), m4 = vdupq_n_u8(4);
    tq3_lookup(vorrq_u8(vandq_u8(qs, m3),                vandq_u8(vshlq_n_u8(qh, 2), m4)), c);
    tq3_lookup(vorrq_u8(vandq_u8(vshrq_n_u8(qs, 2), m3), vandq_u8(qh, m4)),                c + 4);
    tq3_lookup(vorrq_u8(vandq_u8(vshrq_n_u8(qs, 4), m3), vandq_u8(vshrq_n_u8(qh, 2), m4)), c + 8);
    tq3_lookup(vorrq_u8(vshrq_n_u8(qs, 6),               vandq_u8(vshrq_n_u8(qh, 4), m4)), c + 12);
}

TQ_INLINE void tqv2_decode(const void * blk, float32x4_t * c) {
    const block_tqv2_0 * b = blk;
    const uint8x16_t qs = vld1q_u8(b->qs), m3 = vdupq_n_u8(3); // value 16k+l: bits 2k, 2k+1 of qs[l]
    tqv2_lookup(vandq_u8(qs, m3),                c);
    tqv2_lookup(vandq_u8(vshrq_n_u8(qs, 2), m3), c + 4);
    tqv2_lookup(vandq_u8(vshrq_n_u8(qs, 4), m3), c + 8);
    tqv2_lookup(vshrq_n_u8(qs, 6),               c + 12);
}

TQ_INLINE void tq6_decode(const void * blk, float32x4_t * c) {
    const block_tq6_0 * b = blk;
    const uint8x16_t lo = vld1q_u8(b->qs), hi = vld1q_u8(b->qs + 16), qh = vld1q_u8(b->qh);
    // value 16k + l: the low 4 bits as tq4_0's, bits 4 and 5 from bits 2k, 2k+1 of qh[l] (vsli: b << 4 over a's low nibble)
    tq6_lookup(vsliq_n_u8(lo,                qh,                4), c);
    tq6_lookup(vsliq_n_u8(hi,                vshrq_n_u8(qh, 2), 4), c + 4);
    tq6_lookup(vsliq_n_u8(vshrq_n_u8(lo, 4), vshrq_n_u8(qh, 4), 4), c + 8);
    tq6_lookup(vsliq_n_u8(vshrq_n_u8(hi, 4), vshrq_n_u8(qh, 6), 4), c + 12);
}

// ---- quantize -----------------------------------------------------------------------------------

TQ_INLINE float tq_prep_block(const float * x, float * y, float * sq) {
    float32x4_t v[16];
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int i = 0; i < 16; ++i) {
        v[i] = vld1q_f32(x + 4*i);
        m = vmaxq_f32(m, vabsq_f32(v[i]));
    }
    const float amax = vmaxvq_f32(m);
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(sq + 4*i, vdupq_n_f32(0.0f));
        }
        return 0.0f;
    }
    const float32x4_t inv = vdupq_n_f32(1.0f/amax);
    for (int i = 0; i < 16; ++i) {
        v[i] = vmulq_f32(vmulq_f32(v[i], inv), tq_sign(i));
    }
    tq_fwht64_neon(v);
    for (int i = 0; i < 16; ++i) {
        v[i] = vmulq_f32(v[i], vdupq_n_f32(0.125f));
        vst1q_f32(y  + 4*i, v[i]);
        vst1q_f32(sq + 4*i, vmulq_f32(v[i], v[i]));
    }
    return amax;
}

// 16 indices < 256 in 4 vectors of 32-bit lanes to bytes
TQ_INLINE uint8x16_t tq_narrow16(const uint32x4_t * cnt) {
    const uint16x8_t a = vcombine_u16(vmovn_u32(cnt[0]), vmovn_u32(cnt[1]));
    const uint16x8_t b = vcombine_u16(vmovn_u32(cnt[2]), vmovn_u32(cnt[3]));
    return vcombine_u8(vmovn_u16(a), vmovn_u16(b));
}

// 16 indices (number of boundaries strictly below z*t) from 16 coordinates z
TQ_INLINE uint8x16_t tq_count16(const float * z, float32x4_t t, const float * B, int nbnd) {
    uint32x4_t cnt[4];
    for (int g = 0; g < 4; ++g) {
        const float32x4_t w = vmulq_f32(vld1q_f32(z + 4*g), t);
        uint32x4_t c = vdupq_n_u32(0);
        for (int i = 0; i < nbnd; ++i) {
            c = vsubq_u32(c, vcltq_f32(vdupq_n_f32(B[i]), w));
        }
        cnt[g] = c;
    }
    return tq_narrow16(cnt);
}

TQ_INLINE uint8x16_t tq4_count16(const float * z, float32x4_t t) { return tq_count16(z, t, tq_boundaries_4bit, 15); }
TQ_INLINE uint8x16_t tq3_count16(const float * z, float32x4_t t) { return tq_count16(z, t, tq_boundaries_3bit, 7); }
TQ_INLINE uint8x16_t tqv2_count16(const float * z, float32x4_t t) { return tq_count16(z, t, tq_boundaries_2bit, 3); }

// The 63 boundaries of tq6_0 as tq6_search4 reads them: once the bits of the index above a step are known, the
// boundary that step compares with is a table entry indexed by those bits alone, so each table holds only the
// entries its step can read (counting all 63 boundaries would take 63 compares per 4 values).
typedef struct {
    uint8x16_t   b8;    // B[16j + 7], j < 4
    uint8x16x2_t b4;    // B[8j + 3],  j < 8
    uint8x16x4_t b2;    // B[4j + 1],  j < 16
    uint8x16x4_t b1[2]; // B[2j],      j < 32
} tq6_bounds;

// B[o + s*j] for j < 4 (constant arguments: the compiler folds it to a constant)
TQ_INLINE uint8x16_t tq6_bnd4(int s, int o) {
    const float * B = tq_boundaries_6bit;
    const float v[4] = { B[o], B[o + s], B[o + 2*s], B[o + 3*s] };
    return vreinterpretq_u8_f32(vld1q_f32(v));
}

TQ_INLINE tq6_bounds tq6_bounds_load(void) {
    tq6_bounds bd;
    bd.b8 = tq6_bnd4(16, 7);
    for (int k = 0; k < 2; ++k) {
        bd.b4.val[k] = tq6_bnd4(8, 3 + 32*k);
    }
    for (int k = 0; k < 4; ++k) {
        bd.b2.val[k]    = tq6_bnd4(4, 1 + 16*k);
        bd.b1[0].val[k] = tq6_bnd4(2, 8*k);
        bd.b1[1].val[k] = tq6_bnd4(2, 32 + 8*k);
    }
    return bd;
}

// the byte offsets of float i in a table, i < 64
TQ_INLINE uint8x16_t tq_lane_bytes(uint32x4_t i) {
    return vreinterpretq_u8_u32(vmlaq_n_u32(vdupq_n_u32(0x03020100u), i, 0x04040404u));
}

// t + s in the lanes where b < w
TQ_INLINE uint32x4_t tq_step(uint32x4_t t, uint8x16_t b, float32x4_t w, uint32_t s) {
    return vaddq_u32(t, vandq_u32(vcltq_f32(vreinterpretq_f32_u8(b), w), vdupq_n_u32(s)));
}

// number of the 63 boundaries strictly below w: a binary search, bit 5 of the index first
TQ_INLINE uint32x4_t tq6_search4(float32x4_t w, const tq6_bounds * bd) {
    const float * B = tq_boundaries_6bit;
    const uint32x4_t upper = vcltq_f32(vdupq_n_f32(B[31]), w);
    uint32x4_t t = vandq_u32(upper, vdupq_n_u32(32));
    t = tq_step(t, vreinterpretq_u8_f32(vbslq_f32(upper, vdupq_n_f32(B[47]), vdupq_n_f32(B[15]))), w, 16);
    t = tq_step(t, vqtbl1q_u8(bd->b8, tq_lane_bytes(vshrq_n_u32(t, 4))), w, 8);
    t = tq_step(t, vqtbl2q_u8(bd->b4, tq_lane_bytes(vshrq_n_u32(t, 3))), w, 4);
    t = tq_step(t, vqtbl4q_u8(bd->b2, tq_lane_bytes(vshrq_n_u32(t, 2))), w, 2);
    const uint8x16_t i1 = tq_lane_bytes(vshrq_n_u32(t, 1)); // 32 entries: two tables, as tq6_lookup
    return tq_step(t, vqtbx4q_u8(vqtbl4q_u8(bd->b1[0], i1), bd->b1[1], vsubq_u8(i1, vdupq_n_u8(64))), w, 1);
}

TQ_INLINE uint8x16_t tq6_count16(const float * z, float32x4_t t) {
    const tq6_bounds bd = tq6_bounds_load();
    uint32x4_t cnt[4];
    for (int g = 0; g < 4; ++g) {
        cnt[g] = tq6_search4(vmulq_f32(vld1q_f32(z + 4*g), t), &bd);
    }
    return tq_narrow16(cnt);
}

// csq[j] = c*c of the 16 centroids c
TQ_INLINE void tq_store_sq16(const float32x4_t * c, float * csq) {
    for (int g = 0; g < 4; ++g) {
        vst1q_f32(csq + 4*g, vmulq_f32(c[g], c[g]));
    }
}

TQ_INLINE void tq4_index_block(const float * z, float gain, void * blk, float * csq) {
    block_tq4_0 * b = blk;
    const float32x4_t t = vdupq_n_f32(gain);
    uint8x16_t idx[4];
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq4_count16(z + 16*i, t);
        float32x4_t c[4];
        tq4_lookup(idx[i], c);
        tq_store_sq16(c, csq + 16*i);
    }
    vst1q_u8(b->qs,      vorrq_u8(idx[0], vshlq_n_u8(idx[2], 4)));
    vst1q_u8(b->qs + 16, vorrq_u8(idx[1], vshlq_n_u8(idx[3], 4)));
}

TQ_INLINE void tq3_index_block(const float * z, float gain, void * blk, float * csq) {
    block_tq3_0 * b = blk;
    const float32x4_t g = vdupq_n_f32(gain);
    const uint8x16_t m3 = vdupq_n_u8(3), m1 = vdupq_n_u8(1);
    uint8x16_t qs = vdupq_n_u8(0), h = vdupq_n_u8(0);
    for (int i = 0; i < 4; ++i) {
        const uint8x16_t t = tq3_count16(z + 16*i, g);
        float32x4_t c[4];
        tq3_lookup(t, c);
        tq_store_sq16(c, csq + 16*i);
        qs = vorrq_u8(qs, vshlq_u8(vandq_u8(t, m3), vdupq_n_s8((int8_t)(2*i))));
        h  = vorrq_u8(h,  vshlq_u8(vandq_u8(vshrq_n_u8(t, 2), m1), vdupq_n_s8((int8_t)(2*i))));
    }
    vst1q_u8(b->qs, qs);
    vst1_u8(b->qh, vorr_u8(vget_low_u8(h), vshl_n_u8(vget_high_u8(h), 1)));
}

TQ_INLINE void tqv2_index_block(const float * z, float gain, void * blk, float * csq) {
    block_tqv2_0 * b = blk;
    const float32x4_t g = vdupq_n_f32(gain);
    uint8x16_t qs = vdupq_n_u8(0);
    for (int i = 0; i < 4; ++i) {
        const uint8x16_t t = tqv2_count16(z + 16*i, g);
        float32x4_t c[4];
        tqv2_lookup(t, c);
        tq_store_sq16(c, csq + 16*i);
        qs = vorrq_u8(qs, vshlq_u8(t, vdupq_n_s8((int8_t)(2*i))));
    }
    vst1q_u8(b->qs, qs);
}

TQ_INLINE void tq6_index_block(const float * z, float gain, void * blk, float * csq) {
    block_tq6_0 * b = blk;
    const float32x4_t g = vdupq_n_f32(gain);
    uint8x16_t idx[4], qh = vdupq_n_u8(0);
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq6_count16(z + 16*i, g);
        float32x4_t c[4];
        tq6_lookup(idx[i], c);
        tq_store_sq16(c, csq + 16*i);
        qh = vorrq_u8(qh, vshlq_u8(vshrq_n_u8(idx[i], 4), vdupq_n_s8((int8_t)(2*i))));
    }
    vst1q_u8(b->qs,      vsliq_n_u8(idx[0], idx[2], 4));
    vst1q_u8(b->qs + 16, vsliq_n_u8(idx[1], idx[3], 4));
    vst1q_u8(b->qh, qh);
}

TQ_STATIC_ASSERT(TQ_SEARCH_N % 4 == 0, "the scores are computed 4 at a time");

// the 64 values of v summed as tq_tree_sum64: register halves added, then lanes j + j+2 and j + j+1
TQ_INLINE float tq_tree_sum(float32x4_t * v) {
    for (int h = 8; h > 0; h >>= 1) {
        for (int i = 0; i < h; ++i) {
            v[i] = vaddq_f32(v[i], v[i + h]);
        }
    }
    return vpadds_f32(vadd_f32(vget_low_f32(v[0]), vget_high_f32(v[0])));
}

typedef uint8x16_t (*tq_count_fn)(const float * z, float32x4_t t);
typedef void (*tq_lookup_fn)(uint8x16_t idx, float32x4_t * c);
typedef void (*tq_index_z_fn)(const float * z, float gain, void * blk, float * csq);

// The scale search of tq-ref.c on the normalized coordinates z: the gain whose centroids score best
// (first of equal scores), then its indices into blk and their squares into csq.
TQ_INLINE void tq_search_block(const float * y, float inv_norm, void * blk, float * csq,
                               tq_count_fn count, tq_lookup_fn lookup, tq_index_z_fn index) {
    float z[QK_TQ];
    for (int i = 0; i < 16; ++i) {
        vst1q_f32(z + 4*i, vmulq_f32(vld1q_f32(y + 4*i), vdupq_n_f32(inv_norm)));
    }
    float dot[TQ_SEARCH_N], cc[TQ_SEARCH_N], score[TQ_SEARCH_N];
    for (int g = 0; g < TQ_SEARCH_N; ++g) {
        const float32x4_t t = vdupq_n_f32(tq_search_gains[g]);
        float32x4_t p[16], q[16];
        for (int i = 0; i < 4; ++i) {
            lookup(count(z + 16*i, t), p + 4*i);
            for (int j = 4*i; j < 4*i + 4; ++j) {
                q[j] = vmulq_f32(p[j], p[j]);
                p[j] = vmulq_f32(vld1q_f32(z + 4*j), p[j]);
            }
        }
        dot[g] = tq_tree_sum(p);
        cc[g]  = tq_tree_sum(q);
    }
    // all scores at once: IEEE division and square root, as the reference's
    for (int g = 0; g < TQ_SEARCH_N; g += 4) {
        vst1q_f32(score + g, vdivq_f32(vld1q_f32(dot + g), vsqrtq_f32(vld1q_f32(cc + g))));
    }
    index(z, tq_search_pick(score), blk, csq);
}

TQ_INLINE void tq4_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq4_count16, tq4_lookup, tq4_index_block); }
TQ_INLINE void tq3_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq3_count16, tq3_lookup, tq3_index_block); }
TQ_INLINE void tqv2_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tqv2_count16, tqv2_lookup, tqv2_index_block); }
TQ_INLINE void tq6_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq6_count16, tq6_lookup, tq6_index_block); }

void quantize_row_tq4_0(const float * x, block_tq4_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq4_search_block); }
void quantize_row_tq3_0(const float * x, block_tq3_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq3_search_block); }
void quantize_row_tqv2_0(const float * x, block_tqv2_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tqv2_search_block); }
void quantize_row_tq6_0(const float * x, block_tq6_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq6_search_block); }

// ---- dequantize and the rotated-domain kernels ----------------------------------------------------
// Written once for all block types: decode (inlined) gives a block's centroids, unscaled.

typedef void (*tq_decode_fn)(const void * blk, float32x4_t * c);

TQ_INLINE void tq_dequantize_row(const void * x, size_t block_size, tq_decode_fn decode, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, y += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        float32x4_t v[16];
        decode(blk, v);
        tq_fwht64_neon(v);
        const float32x4_t ds = vdupq_n_f32(tq_h2f(tq_block_d(blk))*0.125f);
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(y + 4*i, vmulq_f32(vmulq_f32(v[i], ds), tq_sign(i)));
        }
    }
}

TQ_INLINE float tq_dot_rotated(const void * x, size_t block_size, tq_decode_fn decode, const float * q, int64_t k) {
    assert(k % QK_TQ == 0);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        float32x4_t c[16];
        decode(blk, c);
        float32x4_t s[4];
        for (int i = 0; i < 4; ++i) {
            s[i] = vmulq_f32(vld1q_f32(q + 4*i), c[i]);
        }
        for (int i = 4; i < 16; ++i) {
            s[i % 4] = vfmaq_f32(s[i % 4], vld1q_f32(q + 4*i), c[i]);
        }
        const float32x4_t st = vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));
        acc = vfmaq_f32(acc, st, vdupq_n_f32(tq_h2f(tq_block_d(blk))));
    }
    return vaddvq_f32(acc);
}

TQ_INLINE void tq_mad_rotated(const void * x, size_t block_size, tq_decode_fn decode, float * acc, float w, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        float32x4_t c[16];
        decode(blk, c);
        const float32x4_t wd = vdupq_n_f32(w*tq_h2f(tq_block_d(blk)));
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(acc + 4*i, vaddq_f32(vld1q_f32(acc + 4*i), vmulq_f32(wd, c[i])));
        }
    }
}

void dequantize_row_tq4_0(const block_tq4_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq4_decode, y, k); }
void dequantize_row_tq3_0(const block_tq3_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq3_decode, y, k); }
void dequantize_row_tqv2_0(const block_tqv2_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tqv2_decode, y, k); }
void dequantize_row_tq6_0(const block_tq6_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq6_decode, y, k); }

float tq4_0_dot_rotated(const block_tq4_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq4_decode, q_rot, k); }
float tq3_0_dot_rotated(const block_tq3_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq3_decode, q_rot, k); }
float tqv2_0_dot_rotated(const block_tqv2_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tqv2_decode, q_rot, k); }
float tq6_0_dot_rotated(const block_tq6_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq6_decode, q_rot, k); }

void tq4_0_mad_rotated(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq4_decode, acc, w, k); }
void tq3_0_mad_rotated(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq3_decode, acc, w, k); }
void tqv2_0_mad_rotated(const block_tqv2_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tqv2_decode, acc, w, k); }
void tq6_0_mad_rotated(const block_tq6_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq6_decode, acc, w, k); }

// ---- rotation alone -----------------------------------------------------------------------------

void tq_rotate_row(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float32x4_t v[16];
        for (int i = 0; i < 16; ++i) {
            v[i] = vmulq_f32(vld1q_f32(x + ib*QK_TQ + 4*i), tq_sign(i));
        }
        tq_fwht64_neon(v);
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(y + ib*QK_TQ + 4*i, vmulq_f32(v[i], vdupq_n_f32(0.125f)));
        }
    }
}

void tq_unrotate_row(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float32x4_t v[16];
        for (int i = 0; i < 16; ++i) {
            v[i] = vld1q_f32(x + ib*QK_TQ + 4*i);
        }
        tq_fwht64_neon(v);
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(y + ib*QK_TQ + 4*i, vmulq_f32(vmulq_f32(v[i], vdupq_n_f32(0.125f)), tq_sign(i)));
        }
    }
}

#endif // TQ_CPU_ARM
