"""The C library's own test: optimized kernels against the scalar reference (tests/c/test-tq-kernels.c)."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_c_kernels_agree_with_reference():
    build = ROOT / "build" / "tq"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja"], check=True, capture_output=True)
    subprocess.run(["ninja", "-C", str(build)], check=True, capture_output=True)
    p = subprocess.run([str(build / "test-tq-kernels")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " 0 failed" in p.stdout
