"""One place per fact: the Python bindings agree with the C header and the llama.cpp patches.

- ggml_tq._types holds the ggml_type numbers for all of Python; they must be the ones patches/0001
  gives ggml.h and patches/0005 gives gguf-py.
- The cffi declarations are generated from ggml-tq.h (_build_cffi.cdef_from_header); the C compiler's
  own reading of the header (gcc -aux-info) must give the same functions and argument types as the
  built extension, or the extension is stale or the generator dropped something.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ggml_tq import _types as T
from ggml_tq._build_cffi import cdef_from_header

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "ggml-tq" / "include" / "ggml-tq.h"


def _patch(prefix: str) -> str:
    (p,) = (ROOT / "patches").glob(prefix + "-*.patch")
    return p.read_text()


def test_type_numbers_match_the_patches():
    ours = {"TQ4_0": T.GGML_TYPE_TQ4_0, "TQ3_0": T.GGML_TYPE_TQ3_0, "TQ_ROT_F32": T.GGML_TYPE_TQ_ROT_F32,
            "TQV2_0": T.GGML_TYPE_TQV2_0, "TQ6_0": T.GGML_TYPE_TQ6_0}
    ggml_h = {k: int(v) for k, v in re.findall(r"^\+\s*GGML_TYPE_(TQ\w*)\s*=\s*(\d+)", _patch("0001"), re.M)}
    assert ggml_h == ours
    gguf_py = {k: int(v) for k, v in re.findall(r"^\+\s*(TQ\w*)\s*=\s*(\d+)", _patch("0005"), re.M)}
    assert gguf_py == {k: v for k, v in ours.items() if k != "TQ_ROT_F32"}
    assert {t.name: t.ggml_type for t in T.TYPES.values()} == {"tq4_0": ours["TQ4_0"], "tq3_0": ours["TQ3_0"],
                                                                "tqv2_0": ours["TQV2_0"], "tq6_0": ours["TQ6_0"]}


# ---- cffi declarations vs ggml-tq.h ------------------------------------------------------------------

def _normalize(ctype: str) -> str:
    # what cffi cannot or does not keep: const, the block structs (passed as bytes), the tq_half typedef
    t = re.sub(r"\bconst\b", "", ctype)
    t = re.sub(r"\bblock_\w+\b", "void", t)
    t = re.sub(r"\btq_half\b", "uint16_t", t)
    return " ".join(t.replace("*", " * ").split())


def _compiler_prototypes(header_text: str, tmp_path: Path) -> dict:
    """name -> (result, [args]) of every function the C compiler finds declared in the header text."""
    h = tmp_path / "ggml-tq.h"
    h.write_text(header_text)
    (tmp_path / "t.c").write_text('#include "ggml-tq.h"\n')
    aux = tmp_path / "aux.txt"
    subprocess.run(["gcc", "-std=c11", "-fsyntax-only", "-aux-info", str(aux), "-I", str(tmp_path), str(tmp_path / "t.c")],
                   check=True, capture_output=True, text=True)
    protos = {}
    for line in aux.read_text().splitlines():
        m = re.match(r"/\* (.+):\d+:\w+ \*/ extern (.+?)\s*\b(\w+) \((.*)\);$", line)
        if m and Path(m.group(1)).name == "ggml-tq.h":
            args = [] if m.group(4).strip() == "void" else [a.strip() for a in m.group(4).split(",")]
            protos[m.group(3)] = (_normalize(m.group(2)), [_normalize(a) for a in args])
    return protos


def _built_prototypes() -> dict:
    from ggml_tq._tq_cffi import ffi, lib
    out = {}
    for name in dir(lib):
        t = ffi.typeof(getattr(lib, name))
        out[name] = (_normalize(t.result.cname), [_normalize(a.cname) for a in t.args])
    return out


def _disagreements(header: dict, built: dict) -> list:
    bad = [f"{n}: in ggml-tq.h, not in the extension" for n in sorted(set(header) - set(built))]
    bad += [f"{n}: in the extension, not in ggml-tq.h" for n in sorted(set(built) - set(header))]
    bad += [f"{n}: ggml-tq.h {header[n]} vs extension {built[n]}" for n in sorted(set(header) & set(built))
            if header[n] != built[n]]
    return bad


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc (for -aux-info) is not installed")


@needs_gcc
def test_cffi_extension_declares_the_header(tmp_path):
    header = _compiler_prototypes(HEADER.read_text(), tmp_path)
    assert len(header) >= 25  # the parse found the API, not an empty list
    assert _disagreements(header, _built_prototypes()) == []


@needs_gcc
def test_header_check_catches_a_disagreement(tmp_path):
    # the check above fails when the header and the extension differ: an argument type changed, a function added
    text = HEADER.read_text()
    changed = text.replace("float tq4_0_dot_rotated    (const block_tq4_0 * x, const float * q_rot, int64_t k);",
                           "float tq4_0_dot_rotated    (const block_tq4_0 * x, const float * q_rot, int k);")
    assert changed != text
    changed = changed.replace("const char * tq_cpu_variant(void);",
                              "const char * tq_cpu_variant(void);\nvoid tq_new_kernel(const float * x,\n    int64_t k);")
    bad = _disagreements(_compiler_prototypes(changed, tmp_path), _built_prototypes())
    assert len(bad) == 2 and "tq4_0_dot_rotated" in " ".join(bad) and "tq_new_kernel" in " ".join(bad)
    # and the generator reads the multi-line prototype the compiler reads
    assert "void tq_new_kernel(const float * x, int64_t k);" in cdef_from_header(changed)
