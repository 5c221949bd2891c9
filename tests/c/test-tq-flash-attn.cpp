// CPU flash attention over TQ K/V against the same attention over the dequantized (f32) K/V.
//
// test-backend-ops -b CPU compares the CPU with itself; this test is the CPU's correctness check of the
// rotated-domain paths (row-by-row, split-KV decode, tiled prefill): scores against a rotated query and
// values summed rotated must equal ordinary attention over dequantize(K), dequantize(V) to float rounding.
// Built against the patched ggml by tests/test_llama_cpu.py; exits non-zero on any failure.
#include "ggml.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static std::mt19937 rng(1234);

static void fill(std::vector<float> & x, float scale, int outlier_every) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = scale*nd(rng);
        if (outlier_every && i % outlier_every == 3) {
            x[i] *= 12.0f; // outlier channels, as real K caches have
        }
    }
}

struct result { double max_abs; double ref_max; bool finite; };

// attention with K/V of type kv_type (made from k32/v32 by quantization) vs the dequantized K/V in f32
// window > 0: a mask per head, head h seeing only the last window + 150 h keys (sliding-window layers: whole tiles
// that no head sees, tiles that some heads see and others do not)
static result run_case(ggml_type type_k, ggml_type type_v, int D, int n_head_kv, int gqa, int n_kv, int n_q, int n_threads, bool sinks,
                       float max_bias = 0.0f, float softcap = 0.0f, int window = 0) {
    const int n_head = n_head_kv*gqa;
    std::vector<float> q(D*n_q*n_head), k(D*n_kv*n_head_kv), v(D*n_kv*n_head_kv);
    fill(q, 1.0f, 0);
    fill(k, 1.0f, 64);
    fill(v, 1.0f, 0);

    // dequantized copies: what the TQ cache really holds
    std::vector<float> kd(k.size()), vd(v.size());
    const auto roundtrip = [](ggml_type t, const std::vector<float> & x, std::vector<float> & y, int ne0) {
        if (t == GGML_TYPE_F16 || t == GGML_TYPE_F32) {
            for (size_t i = 0; i < x.size(); ++i) y[i] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(x[i]));
            if (t == GGML_TYPE_F32) y = x;
            return;
        }
        const int64_t rows = x.size()/ne0;
        std::vector<uint8_t> buf(ggml_row_size(t, ne0)*rows);
        ggml_quantize_chunk(t, x.data(), buf.data(), 0, rows, ne0, nullptr);
        ggml_get_type_traits(t)->to_float(buf.data(), y.data(), x.size());
    };
    roundtrip(type_k, k, kd, D);
    roundtrip(type_v, v, vd, D);

    const size_t mem = 64*1024*1024 + 8*(q.size() + 2*k.size())*sizeof(float);
    ggml_init_params ip = { mem, nullptr, false };
    ggml_context * ctx = ggml_init(ip);

    ggml_tensor * tq  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, n_q, n_head, 1);
    memcpy(tq->data, q.data(), ggml_nbytes(tq));
    ggml_tensor * tk  = ggml_new_tensor_4d(ctx, type_k, D, n_kv, n_head_kv, 1);
    ggml_tensor * tv  = ggml_new_tensor_4d(ctx, type_v, D, n_kv, n_head_kv, 1);
    const auto store = [](ggml_tensor * t, const std::vector<float> & x) {
        if (t->type == GGML_TYPE_F32) { memcpy(t->data, x.data(), ggml_nbytes(t)); return; }
        if (t->type == GGML_TYPE_F16) { ggml_fp32_to_fp16_row(x.data(), (ggml_fp16_t *) t->data, x.size()); return; }
        ggml_quantize_chunk(t->type, x.data(), t->data, 0, x.size()/t->ne[0], t->ne[0], nullptr);
    };
    store(tk, k);
    store(tv, v);
    // the reference holds a TQ side as its f32 dequantization and keeps an upstream side (f16, q8_0 keys) as it
    // is, so that both graphs round Q and the V sum to f16, or Q to q8_0, alike where upstream's paths do. q8_0 keys
    // beside TQ values take the tiled path from 64 query rows and the split-KV decode from 512 keys at one row, both
    // of which score them dequantized against the f32 query: there the reference holds them dequantized too.
    const bool k_dequantized = n_q >= 64 || (n_q == 1 && n_kv >= 512);
    const auto ref_type = [k_dequantized](ggml_type t) {
        return t == GGML_TYPE_F16 || (t == GGML_TYPE_Q8_0 && !k_dequantized) ? t : GGML_TYPE_F32;
    };
    ggml_tensor * tk32 = ggml_new_tensor_4d(ctx, ref_type(type_k), D, n_kv, n_head_kv, 1);
    ggml_tensor * tv32 = ggml_new_tensor_4d(ctx, ref_type(type_v), D, n_kv, n_head_kv, 1);
    store(tk32, tk32->type == type_k ? k : kd);
    store(tv32, tv32->type == type_v ? v : vd);

    // causal-style mask with some fully visible rows and some masked keys; the visible keys' values are finite and
    // not all 0, so that ALiBi's slopes (max_bias) scale something
    const int mask_heads = window > 0 ? n_head : 1;
    ggml_tensor * mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_kv, n_q, mask_heads, 1);
    ggml_fp16_t * mp = (ggml_fp16_t *) mask->data;
    for (int h = 0; h < mask_heads; ++h) {
        for (int i = 0; i < n_q; ++i) {
            for (int j = 0; j < n_kv; ++j) {
                const bool hidden = j > n_kv - n_q + i || (window > 0 && j < n_kv - window - 150*h);
                mp[(h*n_q + i)*n_kv + j] = ggml_fp32_to_fp16(hidden ? -INFINITY : -0.25f*(j % 5));
            }
        }
    }
    ggml_tensor * tsinks = nullptr;
    if (sinks) {
        tsinks = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_head);
        for (int h = 0; h < n_head; ++h) ((float *) tsinks->data)[h] = 0.5f*h - 1.0f;
    }

    const float scale = 1.0f/sqrtf((float) D);
    ggml_tensor * out_tq  = ggml_flash_attn_ext(ctx, tq, tk,   tv,   mask, scale, max_bias, softcap);
    ggml_tensor * out_ref = ggml_flash_attn_ext(ctx, tq, tk32, tv32, mask, scale, max_bias, softcap);
        if (tsinks) {
        ggml_flash_attn_ext_add_sinks(out_tq,  tsinks);
        ggml_flash_attn_ext_add_sinks(out_ref, tsinks);
    }

    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out_tq);
    ggml_build_forward_expand(gf, out_ref);
    ggml_graph_compute_with_ctx(ctx, gf, n_threads);

    result r = { 0.0, 0.0, true };
    const float * a = (const float *) out_tq->data;
    const float * b = (const float *) out_ref->data;
    for (int64_t i = 0; i < ggml_nelements(out_tq); ++i) {
        if (!std::isfinite(a[i])) r.finite = false;
        r.max_abs = std::max(r.max_abs, (double) fabsf(a[i] - b[i]));
        r.ref_max = std::max(r.ref_max, (double) fabsf(b[i]));
    }
    ggml_free(ctx);
    return r;
}

static int passed = 0, failed = 0;

// counts a case: within bound of the reference's largest value and finite, or a failure named by fmt
static void check(const result & r, double bound, const char * fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(const result & r, double bound, const char * fmt, ...) {
    const double rel = r.max_abs/r.ref_max;
    const bool ok = r.finite && rel < bound;
    (ok ? passed : failed)++;
    if (!ok) {
        va_list args;
        va_start(args, fmt);
        printf("FAIL ");
        vprintf(fmt, args);
        va_end(args);
        printf(": max rel diff %.3g\n", rel);
    }
}

int main() {
    // float rounding only: rotated vs unrotated order of the same sums
    const double tol = 2e-5;
    for (ggml_type t : { GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0, GGML_TYPE_TQV2_0, GGML_TYPE_TQ6_0 }) {
        for (int D : { 64, 128, 256 }) {
            for (int gqa : { 1, 4, 8 }) {
                // n_q = 1 with >= 512 keys takes split-KV; >= 64 query rows take the tiled path
                for (int n_kv : { 113, 1024 }) {
                    for (int n_q : { 1, 3, 64, 75 }) {
                        for (int nth : { 1, 2 }) {
                            const bool sinks = (n_q == 3);
                            check(run_case(t, t, D, 2, gqa, n_kv, n_q, nth, sinks), tol, "%s D=%d gqa=%d n_kv=%d n_q=%d nth=%d",
                                  ggml_type_name(t), D, gqa, n_kv, n_q, nth);
                        }
                    }
                }
            }
            // mixed K/V types take the row-by-row path
            for (auto kv : { std::make_pair(t, GGML_TYPE_F16), std::make_pair(GGML_TYPE_F16, t) }) {
                // an f16 V is summed in an f16 accumulator (upstream's path): the last-bit differences
                // of the scores surface through its rounding (f16 epsilon 9.8e-4), not through ours
                check(run_case(kv.first, kv.second, D, 2, 4, 600, 1, 2, false), kv.second == GGML_TYPE_F16 ? 1e-3 : tol,
                      "K=%s V=%s D=%d", ggml_type_name(kv.first), ggml_type_name(kv.second), D);
            }
        }
    }
    // tq4_0 keys with a smaller TQ value type (the recommended mixes), and 6-bit TQ or upstream's q8_0 keys beside TQ
    // values (the long-context pairings), take the same fast paths: split-KV from 512 keys at one query row, the tiled path from
    // 64 query rows (75: a partial last tile), row by row otherwise. q8_0 keys are dequantized on both fast paths
    // (the reference holds them so, run_case) and scored by q8_0's vec_dot row by row (in both graphs).
    const std::pair<ggml_type, ggml_type> mixes[] = {
        { GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0 }, { GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0 },
        { GGML_TYPE_Q8_0, GGML_TYPE_TQ4_0 }, { GGML_TYPE_Q8_0, GGML_TYPE_TQ3_0 }, { GGML_TYPE_Q8_0, GGML_TYPE_TQV2_0 },
        { GGML_TYPE_TQ6_0, GGML_TYPE_TQ4_0 }, { GGML_TYPE_TQ6_0, GGML_TYPE_TQV2_0 }, { GGML_TYPE_TQ4_0, GGML_TYPE_TQ6_0 } };
    for (auto kv : mixes) {
        for (int D : { 64, 128, 256 }) {
            for (int n_kv : { 113, 1024 }) {
                for (int n_q : { 1, 3, 64, 75 }) {
                    for (int nth : { 1, 2 }) {
                        check(run_case(kv.first, kv.second, D, 2, 4, n_kv, n_q, nth, n_q == 3), tol,
                              "K=%s V=%s D=%d n_kv=%d n_q=%d nth=%d", ggml_type_name(kv.first), ggml_type_name(kv.second),
                              D, n_kv, n_q, nth);
                    }
                }
            }
        }
    }
    // a context longer than 32768 keys (Gemma-3's training length; offsets past 2^15 rows), every recommended
    // pairing, head 256: split-KV decode (one query row) and the tiled path (64 rows)
    const std::pair<ggml_type, ggml_type> long_pairs[] = {
        { GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0 }, { GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0 },
        { GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0 }, { GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0 }, { GGML_TYPE_Q8_0, GGML_TYPE_TQ4_0 },
        { GGML_TYPE_TQ6_0, GGML_TYPE_TQ4_0 } };
    for (auto kv : long_pairs) {
        for (int n_q : { 1, 64 }) {
            check(run_case(kv.first, kv.second, 256, 1, 4, 33000, n_q, 2, false), tol, "K=%s V=%s D=256 n_kv=33000 n_q=%d",
                  ggml_type_name(kv.first), ggml_type_name(kv.second), n_q);
        }
    }
    // the split-KV decode over TQ values (one query row, 512 keys or more) with what it applies per head and tile:
    // sinks, ALiBi slopes, softcap, a sliding window per head; GQA 1, 4 and 12 (heads of a group sharing each decoded
    // row); 1, 2 and 3 threads (key chunks that end inside a tile, a thread whose keys no head sees)
    const std::pair<ggml_type, ggml_type> split_pairs[] = {
        { GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0 }, { GGML_TYPE_TQ4_0, GGML_TYPE_TQV2_0 }, { GGML_TYPE_Q8_0, GGML_TYPE_TQ4_0 },
        { GGML_TYPE_TQ6_0, GGML_TYPE_TQ4_0 } };
    for (auto kv : split_pairs) {
        for (int gqa : { 1, 4, 12 }) {
            for (int nth : { 1, 2, 3 }) {
                for (int variant = 0; variant < 5; ++variant) {
                    check(run_case(kv.first, kv.second, 128, 2, gqa, 1000, 1, nth, variant == 1,
                                   variant == 2 ? 8.0f : 0.0f, variant == 3 ? 10.0f : 0.0f, variant == 4 ? 200 : 0), tol,
                          "split-KV K=%s V=%s gqa=%d nth=%d variant=%d", ggml_type_name(kv.first), ggml_type_name(kv.second),
                          gqa, nth, variant);
                }
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
