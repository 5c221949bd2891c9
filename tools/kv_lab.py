#!/usr/bin/env python3
"""KV-cache codec lab: real Q/K/V rows from a model, candidate codecs scored offline in torch.

  .venv/bin/python tools/kv_lab.py dump --model smollm2     # -> build/lab/smollm2.npz (a minute)
  .venv/bin/python tools/kv_lab.py dump --model gemma3
  .venv/bin/python tools/kv_lab.py score --model smollm2    # ranking table (mean over layers)
  .venv/bin/python tools/kv_lab.py score --model gemma3 --only tq4_0,q4_0 --per-layer

dump: runs the model (llama.cpp through llama-cpp-python on the patched library, f16 cache, flash
attention) over the first --chunks chunks of --ctx tokens of the text tools/quality.py uses, cut as
llama-perplexity cuts them (each chunk starts with BOS where the vocabulary adds one). An eval callback
(llama_context_params.cb_eval) copies the last tensor of each layer named "Qcur-<il>", "Kcur-<il>",
"Vcur-<il>": the rows after RoPE and QK-norm, as they enter attention. It also checks that the K and V
rows equal what the cache writes receive (the SET_ROWS nodes' sources), reads the softmax scale from the
FLASH_ATTN_EXT node (times the query scaling between Qcur and the node, Gemma-3's f_attention_scale),
and each layer's attention window from its KQ mask (sliding-window layers).

score: per layer and KV head, for each candidate codec: relative MSE of K and of V, RMS error of the
scaled scores q.k against the real queries, KL divergence of the attention weights, and the relative
error of the attention output with K alone, V alone and both quantized (causal softmax, GQA, the
dumped windows). The reference is exact f32 attention. Queries are every --q-stride-th position.
--kld takes quality.py's JSON and prints the real KLD beside the rows it measured.
"""
import argparse
import ctypes
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))   # ggml_tq.lab / reference from the tree (no compiled part needed)
sys.path.insert(0, str(ROOT / "tools"))

import quality  # noqa: E402  (corpus and model paths: the same text and files as the KLD runs)

LAB = ROOT / "build" / "lab"
POS_EDGES = [512, 1024, 2048, 4096]   # --by-position: query position ranges 0-512, 512-1024, ..., 4096-end
NAME_RE = re.compile(r"^(Qcur|Kcur|Vcur)-(\d+)$")


# ------------------------------------------------------------------------------------------------ dump

class GgmlTensor(ctypes.Structure):
    # struct ggml_tensor of ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    # GGML_MAX_NAME 64); the layout is checked against ggml_get_name() at run time
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


class Capture:
    """The eval callback's state for one graph evaluation (one ubatch = one chunk)."""

    def __init__(self, ggml):
        self.g = ggml
        self.last = {}          # "Kcur-3" -> array of the last tensor of that name
        self.cache_src = []     # sources of SET_ROWS nodes, in order
        self.fattn = []         # (q array, op_params scale, softcap, allowed keys per query row)
        self.layout_ok = None
        self.names = set()      # every node name of the graph ("Kcur_normed-3": the layer has QK-norm)

    def array(self, p):
        t = GgmlTensor.from_address(p)
        if self.layout_ok is None:
            self.layout_ok = ctypes.cast(self.g.ggml_get_name(p), ctypes.c_void_p).value == p + GgmlTensor.name.offset
            if not self.layout_ok:
                raise SystemExit("struct ggml_tensor layout does not match this libggml")
        dt = {0: np.float32, 1: np.float16}.get(t.type)
        if dt is None:
            raise SystemExit(f"tensor {t.name.decode()}: type {t.type} not f32/f16")
        n = self.g.ggml_nbytes(p)
        raw = np.empty(n, dtype=np.uint8)
        self.g.ggml_backend_tensor_get(p, raw.ctypes.data, 0, n)
        ne, nb = list(t.ne), list(t.nb)
        return np.lib.stride_tricks.as_strided(raw.view(dt),
                                               shape=ne[::-1], strides=nb[::-1]).astype(np.float32)

    def __call__(self, p, ask, _user):
        t = GgmlTensor.from_address(p)
        name = t.name.decode(errors="replace")
        op = self.g.ggml_op_name(t.op).decode()
        want = bool(NAME_RE.match(name)) or op in ("SET_ROWS", "FLASH_ATTN_EXT")
        if ask:
            self.names.add(name)
            return want
        if NAME_RE.match(name):
            self.last[name] = self.array(p)
        elif op == "SET_ROWS":
            self.cache_src.append(self.array(t.src[0]))
        elif op == "FLASH_ATTN_EXT":
            q = self.array(t.src[0])                      # (1, H, T, D) after the permute
            mask = self.array(t.src[3])                   # (1, 1, T_pad, n_kv)
            allowed = np.isfinite(mask[0, 0]).sum(-1)
            scale = ctypes.c_float.from_buffer_copy(ctypes.c_int32(t.op_params[0])).value
            cap = ctypes.c_float.from_buffer_copy(ctypes.c_int32(t.op_params[2])).value
            self.fattn.append((q[0].transpose(1, 0, 2), scale, cap, allowed))
        return True


class KeyEmulation:
    """An eval callback that puts a candidate key codec of codecs() into a real run: each layer's keys after RoPE
    (the ROPE node named "Kcur-<il>", which the cache write reads) are replaced by their decoded codec output
    before they are written into an f16 K cache. A weighted candidate fits its means and weights as llama.cpp does
    (patch 0009): on the first ubatch of at least 32 tokens of a prompt (positions from 0), from its first 512 keys
    and queries, kept for the prompt's later ubatches. Scores differ from a real cache of that codec by the f16
    rounding of the decoded keys and by the attention kernels' arithmetic (the lab's tq4_0 moved single 2k passkey
    prompts by up to 0.3 nats from the library's). For tools/passkey.py --emulate-k."""

    def __init__(self, ggml, name):
        import torch
        self.torch, self.g, self.name = torch, ggml, name
        self.rope = None        # RoPE's channel pairs: set_model() once the model is loaded
        self.f = None           # the codec, once the head size is known (the first keys)
        self.seen = set()       # node names: "Kcur_normed-<il>" marks a layer with QK-norm
        self.ctx = {}           # layer -> the codec's calibration (means, weights)
        self.q = {}             # layer -> this ubatch's queries, while a fit is due
        self.fit = False        # this ubatch starts a prompt and is long enough to fit on
        self.cap = Capture(ggml)

    def set_model(self, rope_type):
        self.rope = {0: "norm", 2: "neox"}[rope_type]   # llama_model_rope_type

    def codec(self, head):
        if self.f is None:
            allc, self.memo = codecs(head)
            if self.name not in allc:
                raise SystemExit(f"--emulate-k {self.name!r}: not a codec of tools/kv_lab.py")
            self.f = allc[self.name][1]
        return self.f

    def __call__(self, p, ask, _user):
        try:
            return self.step(p, ask)
        except BaseException:   # an exception cannot cross the C callback: stop rather than run on unemulated
            import os
            import traceback
            traceback.print_exc()
            os._exit(2)

    def step(self, p, ask):
        t = GgmlTensor.from_address(p)
        name = t.name.decode(errors="replace")
        op = self.g.ggml_op_name(t.op).decode()
        m = NAME_RE.match(name)
        want = m is not None and m.group(1) in ("Qcur", "Kcur") and op == "ROPE"
        if ask:
            self.seen.add(name)
            return want
        if not want:
            return False
        torch = self.torch
        il = int(m.group(2))
        x = torch.from_numpy(self.cap.array(p)[0])                  # (T, heads, D)
        T, hkv, d = x.shape
        if m.group(1) == "Qcur":
            # RoPE's positions (its second source): a ubatch that starts a prompt and is long enough fits anew
            pos = np.zeros(1, dtype=np.int32)
            self.g.ggml_backend_tensor_get(t.src[1], pos.ctypes.data, 0, 4)
            if il == 0:
                self.fit = T >= 32 and pos[0] == 0
                if self.fit:
                    self.ctx.clear()
            if self.fit:
                self.q[il] = x[:512]
            return True
        if self.fit and il not in self.ctx:
            k0 = x[:512].reshape(-1, hkv * d)
            mean = k0.mean(0)
            kc = (k0 - mean).reshape(-1, hkv, d)
            from ggml_tq import lab
            gate = lab.K_WEIGHT_ALL if f"Kcur_normed-{il}" in self.seen else lab.K_WEIGHT_MAX_RATIO
            self.ctx[il] = {"mean512_k": mean,
                            "weight_gated_k": lab.k_weights(kc, self.q.pop(il), gate, self.rope).reshape(-1)}
        if il not in self.ctx:
            raise RuntimeError(f"--emulate-k: layer {il} has keys before any ubatch to fit on (a prompt under 32 tokens?)")
        f = self.codec(d)
        self.memo.clear()
        y = f(x.reshape(T, hkv * d), "k", self.ctx[il]).reshape(1, T, hkv, d).contiguous().numpy().astype(np.float32)
        if t.type != 0 or y.nbytes != self.g.ggml_nbytes(p) or list(t.nb)[1:3] != [4 * d, 4 * d * hkv]:
            raise RuntimeError(f"--emulate-k: {name} is not a contiguous f32 tensor")
        self.g.ggml_backend_tensor_set(p, y.ctypes.data, 0, y.nbytes)
        return True


def load_libs():
    from ggml_tq.llama import library_dir, load_llama_cpp
    llama_cpp = load_llama_cpp()
    g = ctypes.CDLL(str(library_dir() / "libggml-base.so"))
    g.ggml_get_name.argtypes = [ctypes.c_void_p]
    g.ggml_get_name.restype = ctypes.c_void_p
    g.ggml_nbytes.restype = ctypes.c_size_t
    g.ggml_nbytes.argtypes = [ctypes.c_void_p]
    g.ggml_op_name.restype = ctypes.c_char_p
    g.ggml_op_name.argtypes = [ctypes.c_int]
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    g.ggml_backend_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return llama_cpp, g


def tokenize(llama_cpp, vocab, text, add_special):
    b = text.encode()
    n_max = len(b) + 16
    toks = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, b, len(b), toks, n_max, add_special, False)
    if n < 0:
        raise SystemExit(f"llama_tokenize failed ({n})")
    return list(toks[:n])


def dump(a):
    llama_cpp, g = load_libs()
    mpath = quality.model_path(a.model, a.model_path)
    info = quality.corpus(a.cache_dir)
    quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
    if not a.verbose:
        llama_cpp.llama_log_set(quiet, None)
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(mpath).encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {mpath}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_layer = llama_cpp.llama_model_n_layer(model)
    n_head, n_head_kv = llama_cpp.llama_model_n_head(model), llama_cpp.llama_model_n_head_kv(model)

    cap = Capture(g)
    cb = llama_cpp.ggml_backend_sched_eval_callback(cap)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = a.ctx
    cp.n_threads = cp.n_threads_batch = a.threads
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    cp.type_k = cp.type_v = 1  # f16
    cp.cb_eval = cb
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit("cannot create the context")

    # llama-perplexity: tokenize the whole text with add_special, cut chunks of n_ctx, first token = BOS.
    # A prefix of the text gives the same first tokens (cut at a line end, well past what is needed).
    if a.text == "passkey":
        # tools/passkey.py's prompt: one sentence repeated, a number hidden a fifth into it (about a third into the
        # dump, which keeps the first chunks*ctx tokens), the question (cut off)
        import passkey
        n = a.chunks * a.ctx // 16   # more filler than the chunks need (a repetition is ~24 tokens)
        text = (passkey.INTRO + passkey.FILLER*(n//5) + passkey.NEEDLE.format(key=78417) + passkey.FILLER*(n - n//5)
                + passkey.QUESTION)
    else:
        text = Path(a.text or info["path"]).read_text(errors="replace")
    need = a.chunks * a.ctx
    cut = text.rfind("\n", 0, need * 8) + 1
    toks = tokenize(llama_cpp, vocab, text[:cut], True)
    if len(toks) < need:
        raise SystemExit(f"only {len(toks)} tokens in the first {cut} characters, need {need}")
    add_bos = llama_cpp.llama_vocab_get_add_bos(vocab)
    bos = llama_cpp.llama_vocab_bos(vocab)

    out = {}
    checks = {"k_rows_cached": 0, "v_rows_cached": 0, "layers": n_layer * a.chunks}
    scales, windows, caps = [None] * n_layer, [0] * n_layer, [0.0] * n_layer
    mem = llama_cpp.llama_get_memory(ctx)
    t0 = time.time()
    for c in range(a.chunks):
        chunk = toks[c * a.ctx:(c + 1) * a.ctx]
        if add_bos:
            chunk[0] = bos
        arr = (llama_cpp.llama_token * len(chunk))(*chunk)
        cap.last.clear(); cap.cache_src.clear(); cap.fattn.clear()
        llama_cpp.llama_memory_clear(mem, True)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk))) != 0:
            raise SystemExit("llama_decode failed")
        if len(cap.fattn) != n_layer:
            raise SystemExit(f"{len(cap.fattn)} FLASH_ATTN_EXT nodes for {n_layer} layers")
        srcs = cap.cache_src
        for il in range(n_layer):
            q, k, v = (cap.last[f"{n}-{il}"][0] for n in ("Qcur", "Kcur", "Vcur"))   # (T, heads, D)
            T = q.shape[0]
            # the rows the cache writes receive: 2-D (T, heads*D) views of Kcur / Vcur
            flat = [s.reshape(-1) for s in srcs]
            checks["k_rows_cached"] += any(f.size == k.size and np.array_equal(f, k.reshape(-1)) for f in flat)
            checks["v_rows_cached"] += any(f.size == v.size and np.array_equal(f, v.reshape(-1)) for f in flat)
            qf, scale, softcap, allowed = cap.fattn[il]
            qf = qf[:T]
            ratio = float((qf * q).sum() / (q * q).sum())   # query scaling between Qcur and attention
            if not np.allclose(qf, q * ratio, rtol=1e-3, atol=1e-5 * np.abs(q).max()):
                raise SystemExit(f"layer {il}: attention's Q is not a multiple of Qcur-{il}")
            s = scale * ratio
            if scales[il] is not None and abs(scales[il] - s) > 1e-6 * s:
                raise SystemExit(f"layer {il}: softmax scale changed between chunks")
            scales[il], caps[il] = s, softcap
            last = int(allowed[T - 1])
            windows[il] = last if last < T else 0
            for n, x in (("q", q), ("k", k), ("v", v)):
                out.setdefault(f"{n}{il}", []).append(x)
        print(f"chunk {c + 1}/{a.chunks}: {time.time() - t0:.1f}s", flush=True)
    if checks["k_rows_cached"] != checks["layers"] or checks["v_rows_cached"] != checks["layers"]:
        raise SystemExit(f"K/V rows differ from what the cache writes receive: {checks}")
    meta = {"model": a.model, "model_path": quality.rel(mpath), "n_layer": n_layer, "n_head": n_head,
            "n_head_kv": n_head_kv, "head_dim": int(out["k0"][0].shape[-1]), "ctx": a.ctx, "chunks": a.chunks,
            "scale": scales, "window": windows, "softcap": caps, "checks": checks,
            "rope_type": int(llama_cpp.llama_model_rope_type(model)),
            "qk_norm": [f"Qcur_normed-{il}" in cap.names and f"Kcur_normed-{il}" in cap.names for il in range(n_layer)],
            "corpus_sha256": info["sha256"], "text": a.text or "corpus",
            "text_sha256": hashlib.sha256(text[:cut].encode()).hexdigest(), "add_bos": bool(add_bos)}
    LAB.mkdir(parents=True, exist_ok=True)
    path = Path(a.out or LAB / (f"{a.model}.npz" if not a.text else f"{a.model}-{Path(a.text).stem}.npz"))
    np.savez(path, meta=json.dumps(meta), **{k: np.stack(v) for k, v in out.items()})
    print(f"wrote {quality.rel(path)}: {n_layer} layers x {a.chunks} chunks x {a.ctx} tokens, "
          f"heads {n_head}/{n_head_kv}, head_dim {meta['head_dim']}; windows {sorted(set(windows))}; "
          f"scale {scales[0]:.5f}; K/V rows equal the cache writes' sources in {checks['k_rows_cached']}/"
          f"{checks['layers']} layer-chunks")
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


# ------------------------------------------------------------------------------------------------ codecs

def codecs(head, gates=()):
    """name -> (bits, fn(x, role, ctx) -> decoded x, query transform or None). role is "k" or "v"."""
    from ggml_tq import lab

    def upstream(t, rot=True):
        def f(x, role, ctx):
            n = lab.k_rot_size(head) if role == "k" else 64
            if not rot:
                return lab.UPSTREAM[t](x)
            return lab.upstream_rot(lab.UPSTREAM[t](lab.upstream_rot(x, n)), n)

        def fq(q):
            n = lab.k_rot_size(head)
            if not rot or t == "f16":
                return lab.Q_VEC_DOT[t](q)
            return lab.upstream_rot(lab.Q_VEC_DOT[t](lab.upstream_rot(q, n)), n)
        return lab.BITS[t], f, fq

    memo = {}   # per layer (cleared by the caller): index choices shared by variants

    def tq(bits, rot="block", scale="norm", grid=(1.0,), up=False, block=64, shipped=False, center=False,
           sym=False, gains=None, weight=None):
        def f(x, role, ctx):
            # weight: keys stored as (k - m) * w and read with q / w (ctx's weights, as patch 0009 fits them on the
            # first 512 tokens: "all" weights every KV head, "gated" those with a large predicted gain)
            if weight:
                m, w = ctx["mean512_" + role], ctx[f"weight_{weight}_" + role]
                return _tq((x - m) * w, role) / w + m
            # a fixed per-channel mean m taken out and added back: softmax ignores q.m, a common shift of the
            # scores, and the weights sum to 1, so P(v - m) + m: only m would have to be stored
            if center:
                m = ctx["mean_" + role] if center is True else ctx[f"mean{center}_" + role]
                return _tq(x - m, role) + m
            return _tq(x, role)

        def _tq(x, role):
            # up: upstream's rotation on top (plain H as LLAMA_ATTN_ROT_TQ=1 does, or sym: D H D), K over
            # the largest power of two dividing the head, V over 64 (sym: over the head as well)
            # hd: K only, R = B^T H_n D_n with B TQ's own 64-block rotation, so that TQ's blocks see H_n D_n x
            if up == "hd":
                if role == "v":
                    return lab.tq_shipped(x, bits, gains) if shipped else lab.tq(x, bits, head, rot, scale, grid, block)
                n = lab.k_rot_size(head)
                r = lab.block_unrotate(lab.upstream_rot(x * lab.random_signs(n).repeat(x.shape[-1] // n), n))
                y = lab.tq_shipped(r, bits, gains) if shipped else lab.tq(r, bits, head, rot, scale, grid, block,
                                                                 memo=memo.setdefault((role, up, center), {}))
                return lab.upstream_rot(lab.block_rotate(y), n) * lab.random_signs(n).repeat(x.shape[-1] // n)
            n = (lab.k_rot_size(head) if role == "k" or sym else 64) if up else None
            rot_fn = lab.sym_rot if sym else lab.upstream_rot
            if n:
                x = rot_fn(x, n)
            if shipped:
                y = lab.tq_shipped(x, bits, gains)
            else:
                y = lab.tq(x, bits, head, rot, scale, grid, block, memo=memo.setdefault((role, up, center, sym), {}))
            return rot_fn(y, n) if n else y
        return lab.tq_bits(bits, block), f, None

    def split(n_out, b_out, b_in):
        rest = head - n_out
        bits = (n_out * b_out + 16 + rest * b_in + 16 * rest / (rest & -rest)) / head
        return bits, lambda x, role, ctx: lab.outlier_split(x, head, ctx["outlier_mask_" + role][n_out], b_out, b_in), None

    W, S = lab.GRID, lab.GRID_SMALL
    c = {t: upstream(t, rot=t != "f16") for t in ("f16", "q8_0", "q5_1", "iq4_nl", "q4_0")}
    c["q4_0 norot"] = upstream("q4_0", rot=False)
    for b in (4, 3):
        n = f"tq{b}_0"
        c[n] = tq(b, shipped=True)
        c[n + " +rot"] = tq(b, shipped=True, up=True)
        c[n + " nosearch"] = tq(b, shipped=True, gains=(1.0,))
        c[n + " nosearch +rot"] = tq(b, shipped=True, up=True, gains=(1.0,))
        c[n + " ls"] = tq(b, scale="ls")
        c[n + " search"] = tq(b, grid=W)
        c[n + " search-ls"] = tq(b, scale="ls", grid=W)
        c[n + " search7"] = tq(b, grid=S)
        c[n + " +rot search"] = tq(b, grid=W, up=True)
        c[n + " +rot search-ls"] = tq(b, scale="ls", grid=W, up=True)
        c[n + " +symrot"] = tq(b, shipped=True, up=True, sym=True)
        c[n + " +symrot search"] = tq(b, grid=W, up=True, sym=True)
        c[n + " +hdrot"] = tq(b, shipped=True, up="hd")
        c[n + " +hdrot search"] = tq(b, grid=W, up="hd")
        c[n + " headrot"] = tq(b, rot="head")
        c[n + " headrot search"] = tq(b, rot="head", grid=W)
        c[n + " headrot search-ls"] = tq(b, rot="head", scale="ls", grid=W)
        c[n + " centered"] = tq(b, shipped=True, center=True)
        c[n + " centered search"] = tq(b, grid=W, center=True)
        for nt in (1, 16, 64, 256):
            c[n + f" centered{nt}"] = tq(b, shipped=True, center=nt)
        c[n + " centered +hdrot"] = tq(b, shipped=True, center=True, up="hd")
        c[n + " weighted"] = tq(b, shipped=True, weight="gated")
        c[n + " weighted all"] = tq(b, shipped=True, weight="all")
        c[n + " weighted +hdrot"] = tq(b, shipped=True, weight="gated", up="hd")
        c[n + " weighted all +hdrot"] = tq(b, shipped=True, weight="all", up="hd")
        for gate in gates:  # --k-weight-gates: the gate at other thresholds, weights per channel and per RoPE pair
            c[n + f" weighted<={gate:g}"] = tq(b, shipped=True, weight=f"le{gate:g}")
            c[n + f" pairweighted<={gate:g}"] = tq(b, shipped=True, weight=f"pairle{gate:g}")
        if head > 64:
            c[n + " headblock"] = tq(b, rot="head", block=head)
            c[n + " headblock search"] = tq(b, rot="head", block=head, grid=W)
    # the 2-bit value type: shipped, without its scale search, and the lab's variants
    c["tqv2_0"] = tq(2, shipped=True)
    c["tqv2_0 +rot"] = tq(2, shipped=True, up=True)
    c["tqv2_0 nosearch"] = tq(2, shipped=True, gains=(1.0,))
    c["tqv2_0 search"] = tq(2, grid=W)
    c["tqv2_0 headrot search"] = tq(2, rot="head", grid=W)
    c["tqv2_0 centered"] = tq(2, shipped=True, center=True)
    c["tqv2_0 centered256"] = tq(2, shipped=True, center=256)
    c["tqv2_0 centered1"] = tq(2, shipped=True, center=1)
    # keys at more bits (a long-context key codec): the lab's encoder with its grid search, keys centered on the
    # first 256 tokens; 4 bits the same way, to compare like with like
    for b in (4, 5, 6):
        c[f"tq{b}_0 centered256 search"] = tq(b, grid=W, center=256)
        c[f"tq{b}_0 weighted search"] = tq(b, grid=W, weight="gated")
    q = head // 4
    c[f"split {q}@4+{head - q}@3"] = split(q, 4, 3)
    c[f"split {q}@4+{head - q}@2"] = split(q, 4, 2)
    c[f"split {q}@3+{head - q}@2"] = split(q, 3, 2)
    return c, memo


# candidates: (label, K codec, V codec, quality.py row name or None)
def candidates(names):
    base = [("f16", "f16", "f16"), ("q8_0", "q8_0", "q8_0"), ("q5_1", "q5_1", "q5_1"),
            ("iq4_nl", "iq4_nl", "iq4_nl"), ("q4_0", "q4_0", "q4_0"), ("q4_0 norot", "q4_0 norot", "q4_0 norot")]
    out = [(n, k, v) for n, k, v in base]
    for b in (4, 3):
        t = f"tq{b}_0"
        for suffix in ("", " +rot", " nosearch", " nosearch +rot", " ls", " search", " search-ls", " search7", " +rot search", " +rot search-ls",
                       " +symrot", " +symrot search", " +hdrot", " +hdrot search",
                       " headrot", " headrot search", " headrot search-ls", " headblock", " headblock search",
                       " centered", " centered search"):
            if t + suffix in names:
                out.append((t + suffix, t + suffix, t + suffix))
    # mixes: K at 4 bits with V at 3 or 2; 3-bit keys with tricks
    out += [("tq4_0/tq3_0", "tq4_0", "tq3_0"), ("tq4_0/tq3_0 +rot search", "tq4_0 +rot search", "tq3_0 +rot search"),
            ("tq4_0/tqv2_0", "tq4_0", "tqv2_0"), ("tq4_0/tqv2_0 +rot", "tq4_0 +rot", "tqv2_0 +rot"),
            ("tq4_0/tqv2_0 nosearch", "tq4_0 nosearch", "tqv2_0 nosearch"), ("f16 K/tqv2_0 V", "f16", "tqv2_0"),
            ("tq4_0 search/tqv2_0 search", "tq4_0 search", "tqv2_0 search"),
            ("tq4_0 +rot search/tqv2_0 search", "tq4_0 +rot search", "tqv2_0 search"),
            ("tq4_0 headrot search/tqv2_0 headrot search", "tq4_0 headrot search", "tqv2_0 headrot search"),
            ("tq4_0 +symrot search/tqv2_0 search", "tq4_0 +symrot search", "tqv2_0 search"),
            ("tq4_0 +hdrot search/tqv2_0 search", "tq4_0 +hdrot search", "tqv2_0 search"),
            ("tq4_0 +hdrot search/tq3_0 search", "tq4_0 +hdrot search", "tq3_0 search"),
            ("tq3_0 +hdrot search/tq3_0 search", "tq3_0 +hdrot search", "tq3_0 search"),
            ("tq4_0 +symrot search/tq3_0 +symrot search", "tq4_0 +symrot search", "tq3_0 +symrot search"),
            ("tq3_0 +rot search/tq3_0 search", "tq3_0 +rot search", "tq3_0 search"),
            ("tq4_0/tq3_0 +rot", "tq4_0 +rot", "tq3_0 +rot"),
            ("tq4_0/tq3_0 nosearch", "tq4_0 nosearch", "tq3_0 nosearch"),
            ("tq4_0/tq3_0 nosearch +rot", "tq4_0 nosearch +rot", "tq3_0 nosearch +rot"),
            ("tq4_0 +hdrot/tq3_0", "tq4_0 +hdrot", "tq3_0"), ("tq3_0 +hdrot/tq3_0", "tq3_0 +hdrot", "tq3_0"),
            ("tq4_0 nosearch K/f16 V", "tq4_0 nosearch", "f16"), ("f16 K/tq4_0 nosearch V", "f16", "tq4_0 nosearch"),
            ("tq4_0 nosearch K +rot/f16 V", "tq4_0 nosearch +rot", "f16"), ("tq4_0 +hdrot K/f16 V", "tq4_0 +hdrot", "f16"),
            # which of K and V carries the loss
            ("tq4_0 K/f16 V", "tq4_0", "f16"), ("f16 K/tq4_0 V", "f16", "tq4_0"), ("q4_0 K/f16 V", "q4_0", "f16"),
            ("tq4_0 K +rot/f16 V", "tq4_0 +rot", "f16"), ("tq4_0 +hdrot search K/f16 V", "tq4_0 +hdrot search", "f16")]
    for kb, vb in ((4, 4), (3, 3), (4, 3)):
        for s in (" centered", " centered16", " centered64", " centered256"):
            out.append((f"tq{kb}_0{s}/tq{vb}_0", f"tq{kb}_0{s}", f"tq{vb}_0"))
    for kb, vb in ((4, 4), (3, 3)):
        out.append((f"tq{kb}_0 centered +hdrot/tq{vb}_0", f"tq{kb}_0 centered +hdrot", f"tq{vb}_0"))
    out.append(("tq4_0 centered/tqv2_0 search", "tq4_0 centered", "tqv2_0 search"))
    # centered and weighted keys (patch 0009: the shipped default is "weighted": every head of a QK-norm layer, elsewhere
    # the heads whose predicted ratio is at most 0.45; "weighted all": every head; "+hdrot": then the head-wide
    # sign-randomized Hadamard of the weighted keys, docs/design.md "Interaction with upstream's attention rotation")
    for kb, vb in ((4, 4), (3, 3), (4, 3)):
        for s in (" weighted", " weighted all", " weighted +hdrot", " weighted all +hdrot"):
            out.append((f"tq{kb}_0{s}/tq{vb}_0", f"tq{kb}_0{s}", f"tq{vb}_0"))
    out.append(("tq4_0 weighted/tqv2_0", "tq4_0 weighted", "tqv2_0"))
    out.append(("tq4_0 weighted K/f16 V", "tq4_0 weighted", "f16"))
    for n in sorted(x for x in names if "weighted<=" in x):
        out.append((f"{n}/{n.split()[0]}", n, n.split()[0]))
    # centered values: v - m stored, m added to the output (the weights sum to one)
    for s in ("", "256"):
        out.append((f"tq4_0 centered{s}/tqv2_0", f"tq4_0 centered{s}", "tqv2_0"))
        for vt in ("tq4_0", "tq3_0", "tqv2_0"):
            out.append((f"tq4_0 centered{s}/{vt} centered{s}", f"tq4_0 centered{s}", f"{vt} centered{s}"))
        out.append((f"tq3_0 centered{s}/tq3_0 centered{s}", f"tq3_0 centered{s}", f"tq3_0 centered{s}"))
        out.append((f"f16 K/tqv2_0 centered{s} V", "f16", f"tqv2_0 centered{s}"))
        out.append((f"f16 K/tq3_0 centered{s} V", "f16", f"tq3_0 centered{s}"))
    out.append(("f16 K/tq3_0 V", "f16", "tq3_0"))
    # keys for long contexts: upstream's 8- and 6-bit keys, TQ keys at 4-6 bits, alone and beside tq4_0 values
    out += [("q8_0 K/f16 V", "q8_0", "f16"), ("q5_1 K/f16 V", "q5_1", "f16"), ("q8_0/tq4_0", "q8_0", "tq4_0")]
    for b in (4, 5, 6):
        out += [(f"tq{b}_0 centered256 search K/f16 V", f"tq{b}_0 centered256 search", "f16"),
                (f"tq{b}_0 centered256 search/tq4_0", f"tq{b}_0 centered256 search", "tq4_0"),
                (f"tq{b}_0 weighted search K/f16 V", f"tq{b}_0 weighted search", "f16"),
                (f"tq{b}_0 weighted search/tq4_0", f"tq{b}_0 weighted search", "tq4_0")]
    # values offset by the first token's (an attention sink): stored exactly as zero, while every other value moves
    # by a vector a fraction of its norm
    for vt in ("tq4_0", "tq3_0", "tqv2_0"):
        out.append((f"tq4_0 centered/{vt} centered1", "tq4_0 centered", f"{vt} centered1"))
        out.append((f"f16 K/{vt} centered1 V", "f16", f"{vt} centered1"))
    out.append(("tq3_0 centered/tqv2_0 search", "tq3_0 centered", "tqv2_0 search"))
    for n in names:
        if n.startswith("split"):
            out.append((f"{n} K/tq3_0 search V", n, "tq3_0 search"))
    return [x for x in out if x[1] in names and x[2] in names]


# the default screen; --all scores every candidate above
# "tq4_0" is the shipped encoder (with its scale search over reference.SEARCH_GAINS), "nosearch" the one before
# it; "search" is the lab's 13-point grid (lab.GRID)
MAIN = ["f16", "q8_0", "q5_1", "iq4_nl", "q4_0", "q4_0 norot"] + [
    f"tq{b}_0{s}" for b in (4, 3) for s in ("", " +rot", " nosearch", " nosearch +rot", " search", " search-ls",
                                            " +rot search", " +hdrot", " +hdrot search")] + [
    "tq4_0/tq3_0 nosearch", "tq4_0/tq3_0 nosearch +rot", "tq4_0 +hdrot/tq3_0", "tq3_0 +hdrot/tq3_0",
    "tq4_0 nosearch K/f16 V", "f16 K/tq4_0 nosearch V", "tq4_0 nosearch K +rot/f16 V", "tq4_0 +hdrot K/f16 V",
    "tq4_0/tq3_0", "tq4_0/tq3_0 +rot search", "tq4_0/tqv2_0", "tq4_0/tqv2_0 +rot", "tq4_0 search/tqv2_0 search",
    "tq4_0 +rot search/tqv2_0 search",
    "tq4_0 +hdrot search/tqv2_0 search", "tq4_0 +hdrot search/tq3_0 search", "tq3_0 +hdrot search/tq3_0 search",
    "tq4_0/tq3_0 +rot", "tq4_0 K/f16 V", "f16 K/tq4_0 V", "f16 K/tqv2_0 V", "q4_0 K/f16 V", "tq4_0 K +rot/f16 V",
    "tq4_0 +hdrot search K/f16 V"]




# ------------------------------------------------------------------------------------------------ score

def score(a):
    import torch
    from ggml_tq import lab
    torch.set_num_threads(a.threads)
    path = Path(a.dump or LAB / f"{a.model}.npz")
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    head, H, Hkv = meta["head_dim"], meta["n_head"], meta["n_head_kv"]
    g = H // Hkv
    # RoPE's channel pairs (older dumps lack the type: Gemma-3 is NEOX, SmolLM2 NORM)
    rope = {0: "norm", 2: "neox"}.get(meta.get("rope_type", 2 if meta["model"].startswith("gemma") else 0))
    qk_norm = meta.get("qk_norm", [meta["model"].startswith("gemma")] * meta["n_layer"])
    gates = [float(x) for x in a.k_weight_gates.split(",")] if a.k_weight_gates else []
    allc, memo = codecs(head, gates)
    cands = candidates(set(allc))
    want = [w.strip() for w in a.only.split(",")] if a.only else None if a.all else MAIN
    if want:
        cands = [c for c in cands if c[0] in want or (gates and "weighted<=" in c[0])]
    kn = sorted({c[1] for c in cands}, key=list(allc).index)
    vn = sorted({c[2] for c in cands}, key=list(allc).index)
    # the real KLD was measured on the KLD runs' text: beside a dump of another text it would mislead
    kld = load_kld(a, meta["model"]) if meta.get("text", "corpus") == "corpus" else {}
    layers = range(meta["n_layer"]) if not a.layers else [int(x) for x in a.layers.split(",")]
    C = meta["chunks"] if a.chunks is None else min(a.chunks, meta["chunks"])
    acc = {}   # (kind, name, metric) -> list over layers of values
    ratios = []  # --k-weight-gates: (layer, window, predicted ratio per KV head)
    t0 = time.time()
    for il in layers:
        Q = torch.from_numpy(z[f"q{il}"][:C])    # (C, T, H, D)
        K = torch.from_numpy(z[f"k{il}"][:C])    # (C, T, Hkv, D)
        V = torch.from_numpy(z[f"v{il}"][:C])
        T = Q.shape[1]
        scale, window = meta["scale"][il], meta["window"][il]
        memo.clear()
        # calibration for the ideas that need per-channel statistics: the first chunk
        ctx = {}
        for role, X in (("k", K), ("v", V)):
            X0 = X[0].reshape(T, -1)
            ctx["mean_" + role] = X0.mean(0)
            for nt in (1, 16, 64, 256, 512):
                ctx[f"mean{nt}_" + role] = X0[:nt].mean(0)
            rms = X[0].pow(2).mean(0)                       # (Hkv, D)
            order = rms.argsort(-1, descending=True)
            ctx["outlier_mask_" + role] = {}
            for n_out in (head // 4,):
                m = torch.zeros(Hkv, head, dtype=torch.bool)
                m.scatter_(1, order[:, :n_out], True)
                ctx["outlier_mask_" + role][n_out] = m
        # key weights as llama.cpp fits them on a first ubatch of 512 tokens (patch 0009)
        kc = (K[0, :512].reshape(-1, Hkv * head) - ctx["mean512_k"]).reshape(-1, Hkv, head)
        # (shipped: pairs tied, every head of a QK-norm layer, elsewhere gate 0.45; --k-weight-gates: per channel and
        # per pair at other gates)
        for gate, max_ratio in (("gated", lab.K_WEIGHT_ALL if qk_norm[il] else lab.K_WEIGHT_MAX_RATIO),
                                ("all", lab.K_WEIGHT_ALL)):
            ctx[f"weight_{gate}_k"] = lab.k_weights(kc, Q[0, :512], max_ratio, rope).reshape(-1)
        for g_ in gates:
            ctx[f"weight_le{g_:g}_k"] = lab.k_weights(kc, Q[0, :512], g_).reshape(-1)
            ctx[f"weight_pairle{g_:g}_k"] = lab.k_weights(kc, Q[0, :512], g_, rope).reshape(-1)
        if gates:
            # predicted score-error ratio (weighted / unweighted, every head weighted) and the measured one, on the
            # 512 tokens of the fit and on the second half of the chunk: tq4_0 keys, every 8th query
            x = K[0].reshape(T, -1) - ctx["mean512_k"]
            e0 = (lab.tq_shipped(x, 4) - x).reshape(T, Hkv, head)
            row = [il, window]
            for r in (None, rope):
                w = ctx["weight_all_k"] if r == rope else lab.k_weights(kc, Q[0, :512], lab.K_WEIGHT_ALL, r).reshape(-1)
                e1 = ((lab.tq_shipped(x * w, 4) - x * w) / w).reshape(T, Hkv, head)
                meas = []
                for sl in (slice(0, 512), slice(T // 2, T)):
                    qs = Q[0, sl][::8].reshape(-1, Hkv, g, head)
                    v = [torch.einsum("qgd,kd->qgk", qs[:, h], e[sl, h]).pow(2).mean() for e in (e0, e1) for h in range(Hkv)]
                    meas.append([(v[Hkv + h] / v[h]).item() for h in range(Hkv)])
                row.append((lab.k_weight_ratio(kc, Q[0, :512], r).tolist(), *meas))
            ratios.append(row)
        qpos = torch.arange(a.q_stride - 1, T, a.q_stride)
        kpos = torch.arange(T)
        allowed = kpos[None, :] <= qpos[:, None]
        if window:
            allowed &= (qpos[:, None] - kpos[None, :]) < window
        neg = torch.where(allowed, 0.0, float("-inf"))

        def attend(q, k):   # q (C, Tq, H, D), k (C, T, Hkv, D) -> log-probs (C, H, Tq, T)
            kk = k.repeat_interleave(g, dim=2)
            s = torch.einsum("cqhd,ckhd->chqk", q, kk) * scale
            return s, torch.log_softmax(s + neg, dim=-1)

        def out(p, v):   # attention weights (C, H, Tq, T) -> (C, H, Tq, Dv)
            return torch.einsum("chqk,ckhd->chqd", p, v.repeat_interleave(g, dim=2))

        def rel(a_, b_, dims):
            return ((a_ - b_) ** 2).sum(dims) / (b_ ** 2).sum(dims)

        Qs = Q[:, qpos]
        s0, lp0 = attend(Qs, K)
        p0 = lp0.exp()
        o0 = out(p0, V)
        # --by-position: output errors of the full-attention layers by how many keys a query sees
        ranges = []
        if a.by_position and not window:
            bucket = torch.bucketize(qpos, torch.tensor(POS_EDGES), right=True)
            ranges = [(b, bucket == b) for b in range(len(POS_EDGES) + 1) if (bucket == b).any()]
            top = acc.setdefault(("top", ""), {})
            for b, sel in ranges:
                top.setdefault(b, []).append(p0[:, :, sel].amax(-1).mean().item())

        def by_pos(kind, n, o1):
            e, ref = ((o1 - o0) ** 2).sum((0, 1, 3)), (o0 ** 2).sum((0, 1, 3))   # per query position
            for b, sel in ranges:
                acc.setdefault((kind + "pos", n), {}).setdefault(b, []).append((e[sel].sum() / ref[sel].sum()).item())
        P = {}
        for n in kn:
            bits, f, fq = allc[n]
            Kq = f(K.reshape(-1, Hkv * head), "k", ctx).reshape(K.shape)
            Qq = Qs if fq is None else fq(Qs.reshape(-1, H * head)).reshape(Qs.shape)
            s1, lp1 = attend(Qq, Kq)
            P[n] = lp1.exp()
            rec = acc.setdefault(("k", n), {})
            rec.setdefault("mse", []).append(rel(Kq, K, (0, 1, 3)).mean().item())
            ds = torch.where(allowed, s1 - s0, 0.0)
            rec.setdefault("score_rms", []).append((ds.pow(2).sum((0, 2, 3)) / allowed.sum() / C).sqrt().mean().item())
            kl = torch.where(allowed, p0 * (lp0 - lp1), 0.0).sum(-1)
            rec.setdefault("attn_kl", []).append(kl.mean().item())
            o1 = out(P[n], V)
            rec.setdefault("out", []).append(rel(o1, o0, (0, 2, 3)).mean().item())
            by_pos("k", n, o1)
        Vq = {}
        for n in vn:
            bits, f, _ = allc[n]
            Vq[n] = f(V.reshape(-1, Hkv * head), "v", ctx).reshape(V.shape)
            rec = acc.setdefault(("v", n), {})
            rec.setdefault("mse", []).append(rel(Vq[n], V, (0, 1, 3)).mean().item())
            o1 = out(p0, Vq[n])
            rec.setdefault("out", []).append(rel(o1, o0, (0, 2, 3)).mean().item())
            by_pos("v", n, o1)
            # how the value errors add up in the output: |sum p e|^2 over sum p^2 |e|^2, 1 where they are
            # independent, more where alike rows (repeated text) carry alike errors
            err = Vq[n] - V
            inc = torch.einsum("chqk,ckh->chq", p0.pow(2), err.pow(2).sum(-1).repeat_interleave(g, dim=2))
            rec.setdefault("coh", []).append((out(p0, err).pow(2).sum() / inc.sum()).item())
        for label, kc, vc in cands:
            rec = acc.setdefault(("kv", label), {})
            rec.setdefault("out", []).append(rel(out(P[kc], Vq[vc]), o0, (0, 2, 3)).mean().item())
        if a.verbose:
            print(f"layer {il}: {time.time() - t0:.1f}s", flush=True)
    dt = time.time() - t0

    def m(kind, n, metric):
        return float(np.mean(acc[(kind, n)][metric]))

    rows = []
    for label, kc, vc in cands:
        bits = (allc[kc][0] + allc[vc][0]) / 2
        rows.append({"name": label, "k": kc, "v": vc, "bits": bits,
                     "k_mse": m("k", kc, "mse"), "score_rms": m("k", kc, "score_rms"), "attn_kl": m("k", kc, "attn_kl"),
                     "out_k": m("k", kc, "out"), "v_mse": m("v", vc, "mse"), "out_v": m("v", vc, "out"),
                     "v_coh": m("v", vc, "coh"),
                     "out_kv": m("kv", label, "out"), "kld": kld.get(label)})
    rows.sort(key=lambda r: r["out_kv"])
    f16_out = next((r["out_kv"] for r in rows if r["name"] == "f16"), None)
    print(f"\n## {meta['model']}: head_dim {head}, heads {H}/{Hkv}, {len(layers)} layers, {C} chunk(s) x {T} tokens, "
          f"queries every {a.q_stride}; windows {sorted(set(meta['window']))}; scored in {dt:.1f}s\n")
    print("Errors relative to exact f32 attention, mean over layers (and KV heads). out = |o'-o|^2/|o|^2 of the "
          "attention output; score rms = scaled q.k error; attn KL = KL(p||p') of the attention weights; V err "
          "coherence = |sum p e|^2 / sum p^2 |e|^2 of the value errors e (1: independent).\n")
    print("| candidate (K/V) | bits | K rel MSE | score rms | attn KL | out K-only | V rel MSE | out V-only | V err "
          "coherence | out K+V | real KLD |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['bits']:.3g} | {r['k_mse']:.2e} | {r['score_rms']:.4f} | {r['attn_kl']:.2e} | "
              f"{r['out_k']:.2e} | {r['v_mse']:.2e} | {r['out_v']:.2e} | {r['v_coh']:.2f} | {r['out_kv']:.2e} | "
              f"{'' if r['kld'] is None else format(r['kld'], '.4f')} |")
    if a.by_position and ("top", "") in acc:
        top = acc[("top", "")]
        heads = [f"{lo}-{min(hi, T)}" for lo, hi in zip([0] + POS_EDGES, POS_EDGES + [T])][:len(top)]
        print(f"\nFull-attention layers (window 0), by the position of the query (keys it sees): out = |o'-o|^2/|o|^2 "
              f"summed over the heads and the queries of the range, mean over the {len(top[0])} layers; top weight = "
              f"mean largest weight of exact attention on the dumped rows.\n")
        print("| K or V only | " + " | ".join(heads) + " |")
        print("|---|" + "---:|" * len(heads))
        print("| top weight | " + " | ".join(f"{np.mean(top[b]):.3f}" for b in sorted(top)) + " |")
        for kind in ("k", "v"):
            for n in (kn if kind == "k" else vn):
                rec = acc.get((kind + "pos", n))
                if rec:
                    print(f"| {kind.upper()} {n} | " + " | ".join(f"{np.mean(rec[b]):.2e}" for b in sorted(rec)) + " |")
    if a.per_layer:
        for kind, n in sorted(acc):
            if kind == "k":
                print(f"per layer, {n} K-only out: " + " ".join(f"{x:.1e}" for x in acc[(kind, n)]["out"]))
    if ratios:
        print("\nScore-error ratio of weighted to unweighted tq4_0 keys per KV head, every head weighted: predicted "
              "(lab.k_weight_ratio, on the first 512 tokens as llama.cpp fits them) and measured against every 8th "
              "query on those 512 tokens and on the second half of the chunk; weights per channel and per RoPE pair "
              "(shipped). A head is weighted where its predicted ratio is at most the gate.\n")
        print("| layer | window | per channel: predicted | first 512 | second half | per pair: predicted | first 512 | "
              "second half | weighted at gate " + ", ".join(f"{g:g}" for g in gates) + " (per channel; per pair) |")
        print("|---:|---:|---|---|---|---|---|---|---|")
        f = lambda v: " ".join(f"{x:.3f}" for x in v)
        for il, window, (r, r1, r2), (rp, rp1, rp2) in ratios:
            on = " / ".join(str(sum(x <= g for x in r)) for g in gates) + "; " + " / ".join(
                str(sum(x <= g for x in rp)) for g in gates)
            print(f"| {il} | {window or 'full'} | {f(r)} | {f(r1)} | {f(r2)} | {f(rp)} | {f(rp1)} | {f(rp2)} | {on} |")
        late = {k: np.array([x for row in ratios for x in row[k][2]]) for k in (2, 3)}
        print(f"\nSecond half, geometric mean over heads (heads below 1): per channel "
              f"{np.exp(np.log(late[2]).mean()):.3f} ({(late[2] < 1).sum()}/{late[2].size}), per pair "
              f"{np.exp(np.log(late[3]).mean()):.3f} ({(late[3] < 1).sum()}/{late[3].size})")
    fit(rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "q_stride": a.q_stride, "chunks": C, "rows": rows}, indent=1))
    return rows


# lab figures tried as predictors of the real KLD: the K+V output error, and the attention-weight KL of
# the keys plus the V-only output error (values do not move the weights)
PREDICTORS = {"out K+V": lambda r: r["out_kv"], "attn KL(K) + out(V)": lambda r: r["attn_kl"] + r["out_v"]}


def fit(rows):
    """How well lab figures predict the real KLD: log-log fits over the rows that have both."""
    ok = [r for r in rows if r.get("kld") and r["kld"] > 0 and r["name"] != "f16"]
    if len(ok) < 3:
        return
    print()
    for name, f in PREDICTORS.items():
        x, y = np.log([f(r) for r in ok]), np.log([r["kld"] for r in ok])
        slope, icpt = np.polyfit(x, y, 1)
        pred = slope * x + icpt
        r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        rank = np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
        print(f"KLD ~ {math.exp(icpt):.3g} * ({name})^{slope:.2f} over {len(ok)} rows: R^2 {r2:.3f} (log-log), "
              f"Spearman {rank:.3f}, worst row off by x{math.exp(np.abs(y - pred).max()):.2f}")
        for r in rows:
            if f(r) > 0:
                r.setdefault("kld_pred", {})[name] = math.exp(icpt) * f(r) ** slope


def load_kld(a, model):
    """Real KLD by row name: quality.py's JSON, then --kld-row NAME=VALUE (measurements made elsewhere)."""
    paths = [Path(a.kld)] if a.kld else [ROOT / "results" / "cpu" / f"quality-{model}.json"]
    out = {}
    for p in paths:
        if p.exists():
            out = {r["name"]: r.get("kld") for r in json.loads(p.read_text()).get("rows", [])}
            break
    for kv in a.kld_row:
        name, _, value = kv.rpartition("=")
        out[name] = float(value)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="run the model, save Q/K/V per layer")
    d.add_argument("--model", choices=quality.MODELS, default="smollm2")
    d.add_argument("--model-path")
    d.add_argument("--ctx", type=int, default=1024)
    d.add_argument("--chunks", type=int, default=2)
    d.add_argument("-t", "--threads", type=int, default=2)
    d.add_argument("--cache-dir", default="~/.cache/ggml-tq")
    d.add_argument("--text", help="a text file to dump instead of the KLD runs' text, or \"passkey\": "
                                   "tools/passkey.py's repeated sentence with a key about a third into the dump "
                                   "(default output build/lab/<model>-<text>.npz)")
    d.add_argument("--out")
    d.add_argument("-v", "--verbose", action="store_true", help="llama.cpp's log")
    s = sub.add_parser("score", help="score candidate codecs on a dump")
    s.add_argument("--model", default="smollm2")
    s.add_argument("--dump", help="npz (default build/lab/<model>.npz)")
    s.add_argument("--only", help="comma list of candidate labels")
    s.add_argument("--all", action="store_true", help="every candidate (default: the main screen)")
    s.add_argument("--layers", help="comma list of layers (default all)")
    s.add_argument("--chunks", type=int)
    s.add_argument("--q-stride", type=int, default=8)
    s.add_argument("--kld", help="quality.py JSON with real KLD (default results/[cpu/]quality-<model>.json)")
    s.add_argument("--kld-row", action="append", default=[], metavar="NAME=KLD",
                   help="a real KLD for a candidate label (repeatable)")
    s.add_argument("--json", help="write the rows here")
    s.add_argument("--per-layer", action="store_true")
    s.add_argument("--k-weight-gates", metavar="G,G,...",
                   help="also key weighting gated at these predicted ratios (\"tqN_0 weighted<=G\"), and the ratio of "
                        "every KV head")
    s.add_argument("--by-position", action="store_true",
                   help="also the K-only and V-only output errors of the full-attention layers by query position")
    s.add_argument("-t", "--threads", type=int, default=2)
    s.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    dump(a) if a.cmd == "dump" else score(a)


if __name__ == "__main__":
    main()
