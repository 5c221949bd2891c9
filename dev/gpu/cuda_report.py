#!/usr/bin/env python3
"""Tables and verdicts from a GPU run of dev/gpu/cuda_device.sh (results/cuda/): llama-bench per cache type,
the attention kernels alone (test-backend-ops perf) with their achieved bandwidth, and the issue's targets.

    python3 dev/gpu/cuda_report.py [results/cuda] > results/cuda/summary.md
"""
import json
import re
import sys
from pathlib import Path

d = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cuda")
# tq4_0-v4: GGML_TQ_FA_I8=0 (the kernel before the int8 one); tq4_0-nocl: GGML_TQ_FA_CLUSTER=0, a switch of
# the build measured in results/cuda/2026-11-25-final (thread-block clusters, since removed)
types = ["f16", "q8_0", "q4_0", "tq4_0", "tq4_0-nocl", "tq4_0-v4", "tq3_0"]
bench = {}
for t in types:
    f = d / f"bench-{t}.json"
    if f.exists():
        for r in json.load(open(f)):
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            bench[(t, test, r["n_depth"])] = (r["avg_ts"], r["stddev_ts"])
        dev = json.load(open(f))[0]
depths = sorted({k[2] for k in bench})
print(f"# GPU run: {dev.get('gpu_info', '?')}, llama.cpp build {dev.get('build_commit', '?')}")
print(f"llama-bench -m r8b-q4_0.gguf (random Llama-3-8B shape, Q4_0) -fa 1 -ngl 99 -p 512 -n 128 "
      f"-d {','.join(map(str, depths))} -r {len(dev.get('samples_ts', [0, 0]))} -ctk T -ctv T, one type per call "
      f"(dev/gpu/cuda_device.sh bench)\n")
print("| cache | " + " | ".join(f"{t} @ d{dp}" for dp in depths for t in ("pp512", "tg128")) + " |")
print("|---|" + "---:|" * (2 * len(depths)))
for t in types:
    cells = [f"{bench[(t, tt, dp)][0]:.1f}" if (t, tt, dp) in bench else "n/a" for dp in depths for tt in ("pp512", "tg128")]
    print(f"| {t} | " + " | ".join(cells) + " |")


def v(t, test, dp):
    return bench.get((t, test, dp), (float("nan"), 0))[0]


print("\n## Targets (issue 4)\n")
checks = [
    ("tg128 @ d32768: tq4_0 >= 1.4x f16", v("tq4_0", "tg128", 32768) / v("f16", "tg128", 32768), 1.4),
    ("tg128 @ d32768: tq4_0 >= 2x q4_0", v("tq4_0", "tg128", 32768) / v("q4_0", "tg128", 32768), 2.0),
    ("tg128 @ d32768: tq3_0 >= tq4_0", v("tq3_0", "tg128", 32768) / v("tq4_0", "tg128", 32768), 1.0),
    ("tg128 @ d0: tq4_0 >= 0.97x f16", v("tq4_0", "tg128", 0) / v("f16", "tg128", 0), 0.97),
    ("pp512 @ d32768: tq4_0 >= 0.95x f16", v("tq4_0", "pp512", 32768) / v("f16", "pp512", 32768), 0.95),
    ("(beyond the targets) tg128 @ d65536: tq4_0 vs f16", v("tq4_0", "tg128", 65536) / v("f16", "tg128", 65536), None),
    ("(beyond the targets) tg128 @ d65536: tq4_0 vs q4_0", v("tq4_0", "tg128", 65536) / v("q4_0", "tg128", 65536), None),
]
print("| target | measured ratio | verdict |")
print("|---|---:|---|")
for name, ratio, need in checks:
    verdict = "" if need is None else ("MET" if ratio >= need else "MISSED")
    print(f"| {name} | {ratio:.2f}x | {verdict} |")

perf = d / "tbo-perf.log"
if perf.exists():
    print("\n## The attention kernels alone, 32k context (test-backend-ops perf -o FLASH_ATTN_EXT)\n")
    print("Shape: head size 128, 8 KV heads, GQA 4, 32768 keys, 1 query token. Bytes = the K and V cache read once;")
    print("bandwidth = bytes / time, against the device read bandwidth measured in the same run (dev/gpu/bw.cu, bw.txt).\n")
    bw = (d / "bw.txt").read_text() if (d / "bw.txt").exists() else ""
    m = re.search(r"read\s+(\d+) GB/s", bw)
    read_gbs = float(m.group(1)) if m else float("nan")
    bits = {"f16": 16, "q8_0": 8.5, "q4_0": 4.5, "tq4_0": 4.25, "tq3_0": 3.25}
    print("| cache | us/run | K+V bytes | achieved GB/s | of read bandwidth |")
    print("|---|---:|---:|---:|---:|")
    seen = set()
    for line in perf.read_text().splitlines():
        m = re.search(r"type_K=([a-z0-9_]+),.*?([0-9.]+) us/run", line)
        if m and m.group(1) not in seen:
            t, us = m.group(1), float(m.group(2))
            seen.add(t)
            nbytes = 2 * 32768 * 8 * 128 * bits[t] / 8
            gbs = nbytes / (us * 1e-6) / 1e9
            print(f"| {t} | {us:.1f} | {nbytes / 1e6:.1f} MB | {gbs:.0f} | {gbs / read_gbs * 100:.0f}% |")
    print(f"\nDevice read bandwidth (dev/gpu/bw.cu, same machine): {read_gbs:.0f} GB/s.")
