"""The C library's own test: optimized kernels against the scalar reference (tests/c/test-tq-kernels.c).

Built with CMakeLists.txt (the source lists of ggml-tq/ggml-tq.cmake) for this machine, for the
compiler's default x86 target (no AVX2: the scalar fallback), and cross-compiled for AArch64 and run
under qemu-user, so that the NEON kernels are checked byte for byte on an x86 machine too.
"""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")


def build_and_run(name: str, cmake_args=(), cflags="", runner=()):
    build = ROOT / "build" / name
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_C_FLAGS=-Werror {cflags}", *cmake_args],
                   check=True, capture_output=True)
    b = subprocess.run(["ninja", "-C", str(build)], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-2000:]
    p = subprocess.run([*runner, str(build / "test-tq-kernels")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " 0 failed" in p.stdout
    return p.stdout


def test_c_kernels_agree_with_reference():
    out = build_and_run("tq")
    if platform.machine() == "x86_64" and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "variant avx" in out  # the SIMD kernels ran, not the fallback


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the generic x86 build is an x86 check")
def test_c_kernels_scalar_fallback():
    out = build_and_run("tq-generic", ["-DGGML_TQ_NATIVE=OFF"])
    assert "variant scalar" in out


@pytest.mark.skipif(platform.machine() != "x86_64" or "avx2" not in Path("/proc/cpuinfo").read_text(),
                    reason="runs the AVX2 kernels, which need an x86 CPU with AVX2")
def test_c_kernels_avx2_without_avx512():
    # the native build takes AVX-512 where the CPU has it: the AVX2 + FMA kernels need a build of their own
    out = build_and_run("tq-avx2", ["-DGGML_TQ_NATIVE=OFF"], cflags="-mavx2 -mfma -mf16c")
    assert "variant avx2" in out


@pytest.mark.parametrize("march", ["armv8-a", "armv8.2-a+fp16+dotprod"])
def test_c_kernels_neon_under_qemu(march):
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
    out = build_and_run(f"tq-aarch64-{march.replace('+', '-')}", [
        "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DGGML_TQ_NATIVE=OFF",
    ], cflags=f"-march={march}", runner=["qemu-aarch64", "-L", str(AARCH64_SYSROOT)])
    assert "variant neon" in out
