"""cffi build script (API mode, out of line): compiles the ggml-tq C sources into ggml_tq._tq_cffi.

Run by setuptools through setup.py's cffi_modules, or by hand: `python python/ggml_tq/_build_cffi.py`
(builds it under build/cffi/, for debugging the build). The declarations are read from ggml-tq/include/ggml-tq.h
(cdef_from_header): block structs left out, Python passes blocks as raw byte buffers (void *) and the C
compiler converts them to the struct pointers. tests/test_types.py checks the result against the
compiler's own reading of the header.
"""
import os
import re

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))  # python/ggml_tq -> repository root


def _rel(*parts: str) -> str:
    # setuptools wants source paths relative to the project root, the working directory of a build
    return os.path.relpath(os.path.join(_ROOT, *parts))


HEADER = os.path.join(_ROOT, "ggml-tq", "include", "ggml-tq.h")


def cdef_from_header(text: str) -> str:
    """The declarations of ggml-tq.h that cffi needs, in cffi's dialect.

    tq_half and every function prototype; the block structs are left out and their pointers become
    void *, so Python passes blocks as raw byte buffers. Comments, preprocessor lines, the extern "C"
    wrapper and the static asserts are dropped: cffi parses C declarations, not the preprocessor.
    """
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = "\n".join(ln for ln in text.splitlines()
                     if not ln.lstrip().startswith("#") and ln.strip() not in ('extern "C" {', "}"))
    decls = ["typedef uint16_t tq_half;"]
    for stmt in text.split(";"):
        stmt = " ".join(stmt.split())
        if "(" not in stmt or stmt.startswith(("typedef", "TQ_STATIC_ASSERT")) or "{" in stmt or "}" in stmt:
            continue
        decls.append(re.sub(r"\b(const )?block_\w+ \*", r"\1void *", stmt) + ";")
    return "\n".join(decls) + "\n"


def build_ffi() -> FFI:
    with open(HEADER) as f:
        cdef = cdef_from_header(f.read())
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        "ggml_tq._tq_cffi",
        '#include "ggml-tq.h"\n',
        sources=[_rel("ggml-tq", "src", f) for f in ("tq-ref.c", "tq-cpu.c", "arch/x86.c", "arch/arm.c", "tq-ggml-cpu.c")],
        include_dirs=[_rel("ggml-tq", "include"), _rel("ggml-tq", "src")],
        # -std=c11 (not gnu11) also means -ffp-contract=off: no fused multiply-adds, so the float
        # operations are exactly the ones tq-ref.c writes, the ones the torch reference repeats.
        extra_compile_args=["-O2", "-march=native", "-std=c11", "-ffp-contract=off"],
        libraries=["m"],
    )
    return ffi


# what setup.py's cffi_modules builds; only in a source tree (an installed ggml_tq has no header)
ffibuilder = build_ffi() if os.path.exists(HEADER) else None

if __name__ == "__main__":
    os.chdir(_ROOT)
    ffibuilder.compile(tmpdir=os.path.join(_ROOT, "build", "cffi"), verbose=True)
