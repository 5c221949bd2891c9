#!/usr/bin/env python3
"""Write a llama-architecture GGUF with random F16 weights, for speed benchmarks only.

Shapes default to Llama-3-8B (32 layers, 4096 hidden, 32 heads, 8 KV heads, head_dim 128).
The vocabulary is a dummy SentencePiece-style list so that the model loads and llama-bench runs.

--qk-norm writes a Qwen3-architecture model instead: the same tensors plus a per-head RMS norm of the queries and
keys (attn_q_norm, attn_k_norm) and NEOX RoPE, for the code paths that depend on QK-norm.

Origin: the project's shared tools (/work/shared/tools/make_random_llama.py), with --qk-norm added;
tools/quality.py uses it for the random-weight head_dim 128/256 models.
Needs the gguf package: PYTHONPATH=build/llama.cpp-src/gguf-py.
"""
import argparse
import numpy as np
import gguf

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--embd", type=int, default=4096)
p.add_argument("--ff", type=int, default=14336)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=8)
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--ctx", type=int, default=131072)
p.add_argument("--qk-norm", action="store_true", help="Qwen3 architecture: RMS norms of Q and K per head")
a = p.parse_args()

head_dim = a.embd // a.heads
rng = np.random.default_rng(0)
pool = (rng.standard_normal(1 << 26, dtype=np.float32) * 0.02).astype(np.float16)

def rand(*shape):
    n = int(np.prod(shape))
    reps = -(-n // pool.size)
    flat = np.tile(pool, reps)[:n] if reps > 1 else pool[rng.integers(0, pool.size - n + 1):][:n]
    return flat.reshape(shape)

w = gguf.GGUFWriter(a.out, "qwen3" if a.qk_norm else "llama")
w.add_context_length(a.ctx)
w.add_embedding_length(a.embd)
w.add_block_count(a.layers)
w.add_feed_forward_length(a.ff)
w.add_head_count(a.heads)
w.add_head_count_kv(a.kv_heads)
w.add_rope_dimension_count(head_dim)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(500000.0)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
toks = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
toks += [f"t{i}".encode() for i in range(a.vocab - len(toks))]
w.add_tokenizer_model("llama")
w.add_token_list(toks)
w.add_token_scores([0.0] * a.vocab)
types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
types += [gguf.TokenType.NORMAL] * (a.vocab - len(types))
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)

ones = lambda n: np.ones(n, dtype=np.float32)
w.add_tensor("token_embd.weight", rand(a.vocab, a.embd))
w.add_tensor("output_norm.weight", ones(a.embd))
w.add_tensor("output.weight", rand(a.vocab, a.embd))
kv = a.kv_heads * head_dim
for i in range(a.layers):
    b = f"blk.{i}."
    w.add_tensor(b + "attn_norm.weight", ones(a.embd))
    w.add_tensor(b + "attn_q.weight", rand(a.embd, a.embd))
    w.add_tensor(b + "attn_k.weight", rand(kv, a.embd))
    w.add_tensor(b + "attn_v.weight", rand(kv, a.embd))
    w.add_tensor(b + "attn_output.weight", rand(a.embd, a.embd))
    if a.qk_norm:
        w.add_tensor(b + "attn_q_norm.weight", ones(head_dim))
        w.add_tensor(b + "attn_k_norm.weight", ones(head_dim))
    w.add_tensor(b + "ffn_norm.weight", ones(a.embd))
    w.add_tensor(b + "ffn_gate.weight", rand(a.ff, a.embd))
    w.add_tensor(b + "ffn_up.weight", rand(a.ff, a.embd))
    w.add_tensor(b + "ffn_down.weight", rand(a.embd, a.ff))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file(progress=False)
w.close()
print("wrote", a.out)
