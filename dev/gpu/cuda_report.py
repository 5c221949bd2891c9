#!/usr/bin/env python3
"""CUDA speed tables from a GPU run of dev/gpu/cuda_device.sh: llama-bench per cache type, and the attention
kernels alone (test-backend-ops perf) with their achieved bandwidth where the run has them.

    .venv/bin/python dev/gpu/cuda_report.py RUN_DIR [OUT_DIR]     # OUT_DIR: results/cuda-h200 by default

RUN_DIR holds what `dev/gpu/cuda_device.sh build model bench` brought back (bench-<type>.json); for the kernel
section also bw.txt and tbo-perf.log from its device-logs.tgz (`perf` step). Writes OUT_DIR/speed.md (the table
the README quotes), speed.json (the llama-bench records) and speed.png (decode tokens/s against depth).
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from quality import BITS  # noqa: E402  bits per value of each cache type
from speed import PLOT_TYPES, decode_series, plot_decode  # noqa: E402  the CPU table's plot, the same way

run = Path(sys.argv[1])
out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "results" / "cuda-h200"
# caches as cuda_device.sh names them (K-V for a mix; -norot / +rot: upstream's rotation forced off / on for TQ;
# -noi8: the int8-scoring decode kernel off), in table order: those of the run, known ones first
ORDER = ["f16", "q8_0", "q4_0", "tq4_0", "tq4_0-norot", "tq4_0+rot", "tq4_0+krot", "tq4_0-noi8", "tq3_0",
         "tq3_0+krot", "tq4_0-tq3_0", "tq4_0-tq3_0+krot", "tq4_0-tqv2_0", "q8_0-tq4_0", "q8_0-tq4_0-noi8", "q8_0-tq3_0", "tq6_0-tq4_0"]
found = sorted(f.name[len("bench-"):-len(".json")] for f in run.glob("bench-*.json"))
types = [t for t in ORDER if t in found] + [t for t in found if t not in ORDER]
bench, records = {}, []
for t in types:
    f = run / f"bench-{t}.json"
    if f.exists():
        for r in json.load(open(f)):
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            bench[(t, test, r["n_depth"])] = (r["avg_ts"], r["stddev_ts"])
            records.append(dict(r, cache=t))
if not records:
    raise SystemExit(f"no bench-<type>.json in {run}")
dev = records[0]
types = [t for t in types if any(k[0] == t for k in bench)]
depths = sorted({k[2] for k in bench})
reps = len(dev.get("samples_ts", [0, 0]))


def v(t, test, dp):
    return bench.get((t, test, dp), (float("nan"), 0))[0]


cols = [(tt, dp) for dp in depths for tt in ("pp512", "tg128")]
md = [f"# KV-cache speed on CUDA (llama-bench): {dev.get('gpu_info', '?')}", "",
      "- model: random Llama-3-8B shape (32 layers, 4096 wide, 32 heads, 8 KV heads, head 128), Q4_0 weights "
      "(tools/make_random_llama.py, llama-quantize)",
      f"- settings: -fa 1 -ngl 99 -p 512 -n 128 -d {','.join(map(str, depths))} -r {reps}, one llama-bench call per "
      "cache type (-ctk T -ctv T; K-V: -ctk K -ctv V)",
      f"- machine: {dev.get('gpu_info', '?')}, {dev.get('cpu_info', '?')}; llama.cpp build {dev.get('build_commit', '?')}",
      "", "tokens/s:", "",
      "| cache | " + " | ".join(f"{tt} @ d{dp}" for tt, dp in cols) + " |",
      "|---|" + "---:|" * len(cols)]
for t in types:
    md.append(f"| {t} | " + " | ".join(f"{v(t, tt, dp):.1f}" if (t, tt, dp) in bench else "n/a" for tt, dp in cols) + " |")
# every cache with a TQ side against f16
for num, den in [(t, "f16") for t in types if t.startswith("tq") or "-tq" in t] + [("tq4_0", "q4_0")]:
    if num in types and den in types:
        md.append(f"| **{num}/{den}** | " + " | ".join(f"{v(num, tt, dp) / v(den, tt, dp):.2f}x" for tt, dp in cols) + " |")
if any(t.endswith("+krot") for t in types):
    md += ["", "Rows marked +krot were measured with a build whose patch 0004 kept upstream's Hadamard rotation of Q "
           "and K for TQ keys at heads of 128/256 by default. That default was dropped (on Gemma-3 it raised "
           "tq4_0's KLD: docs/design.md); the shipped types run as the unmarked tq4_0 row. The rotation costs 1-3 % "
           "of decode speed (tq4_0+krot against tq4_0), so those rows slightly understate the shipped caches."]
md += ["", "![decode tokens/s against depth](speed.png)", "", "## Commands", "", "```",
       "dev/gpu/pack_llama.sh                                   # here: the patched llama.cpp source for the GPU machine",
       f"BENCH_TYPES=\"{' '.join(t.replace('-tq', '/tq') for t in types)}\" BENCH_REPS={reps} "
       f"BENCH_DEPTHS={','.join(map(str, depths))} dev/gpu/cuda_device.sh build model bench"
       + (" perf" if (run / "tbo-perf.log").exists() else "") + "   # there",
       f".venv/bin/python dev/gpu/cuda_report.py RUN_DIR {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}",
       "```", ""]

perf = run / "tbo-perf.log"
if perf.exists():
    bw = (run / "bw.txt").read_text() if (run / "bw.txt").exists() else ""
    m = re.search(r"read\s+(\d+) GB/s", bw)
    read_gbs = float(m.group(1)) if m else float("nan")
    md += ["## The attention kernels alone, 32k context (test-backend-ops perf -o FLASH_ATTN_EXT)", "",
           "Head size 128, 8 KV heads, GQA 4, 32768 keys, 1 query token. Bytes: K and V read once; bandwidth: bytes / "
           "time, against the read bandwidth dev/gpu/bw.cu measured in the same run.", "",
           "| cache | us/run | K+V bytes | achieved GB/s | of read bandwidth |", "|---|---:|---:|---:|---:|"]
    seen = set()
    for line in perf.read_text().splitlines():
        m = re.search(r"type_K=([a-z0-9_]+),type_V=([a-z0-9_]+),.*?([0-9.]+) us/run", line)
        if m and m.group(1, 2) not in seen and m.group(1) in BITS and m.group(2) in BITS:
            tk, tv, us = m.group(1), m.group(2), float(m.group(3))
            seen.add((tk, tv))
            nbytes = 32768 * 8 * 128 * (BITS[tk] + BITS[tv]) / 8
            gbs = nbytes / (us * 1e-6) / 1e9
            t = tk if tk == tv else f"{tk}-{tv}"
            md.append(f"| {t} | {us:.1f} | {nbytes / 1e6:.1f} MB | {gbs:.0f} | {gbs / read_gbs * 100:.0f}% |")
    md += ["", f"Device read bandwidth (dev/gpu/bw.cu): {read_gbs:.0f} GB/s.", ""]

# decode across model shapes (step shapes): tg128 t/s per cache and depth, and the TQ caches against f16
shape_recs = {}
for f in sorted(run.glob("shape-*.json")):
    shape_cache = f.name[len("shape-"):-len(".json")]
    for r in json.load(open(f)):
        shape_recs.setdefault(shape_cache, {})[r["n_depth"]] = (r["avg_ts"], r["stddev_ts"], r)
if shape_recs:
    split = {}   # file key -> (shape, cache): the longest cache name the key ends with
    for k in shape_recs:
        t = max((t for t in ORDER if k.endswith("-" + t)), key=len, default=None)
        if t:
            split[k] = (k[:-len(t) - 1], t)
    shapes = list(dict.fromkeys(sh for sh, _ in split.values()))
    caches = [t for t in ORDER if any(t == c for _, c in split.values())]
    sdepths = sorted({d for v_ in shape_recs.values() for d in v_})
    md += ["## Decode across model shapes (tg128 tokens/s)", "",
           "Random models with real models' attention and FFN dimensions (dev/gpu/cuda_device.sh, SHAPE_LIST), "
           "SHAPE_LAYERS (8) layers, Q4_0 weights, -fa 1 -ngl 99 -p 0 -n 128, "
           "-r 2; ratio = cache / f16 at the same depth.", "",
           "| shape | cache | " + " | ".join(f"d{d}" for d in sdepths) + " | " +
           " | ".join(f"/f16 d{d}" for d in sdepths) + " |",
           "|---|---|" + "---:|" * (2 * len(sdepths))]
    for sh in shapes:
        base = shape_recs.get(f"{sh}-f16", {})
        for t in caches:
            recs = shape_recs.get(f"{sh}-{t}")
            if not recs:
                continue
            cells = [f"{recs[d][0]:.1f}" if d in recs else "n/a" for d in sdepths]
            ratios = [f"{recs[d][0] / base[d][0]:.2f}x" if d in recs and d in base else "" for d in sdepths]
            md.append(f"| {sh} | {t} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    md += ["", "```", f"SHAPES=\"{' '.join(shapes)}\" SHAPE_TYPES=\"{' '.join(t.replace('-tq', '/tq') for t in caches)}\" "
           f"SHAPE_DEPTHS={','.join(map(str, sdepths))} dev/gpu/cuda_device.sh build shapes   # there", "```", ""]

out.mkdir(parents=True, exist_ok=True)
(out / "speed.md").write_text("\n".join(md))
(out / "speed.json").write_text(json.dumps({"gpu": dev.get("gpu_info"), "depths": depths, "repetitions": reps,
                                            "llama_bench_records": records}, indent=1))
recs = [dict(r, type_k=r["cache"], type_v=r["cache"]) for r in records]  # one series per run, -noi8 included
plot_decode(decode_series(recs, [t for t in PLOT_TYPES + ["tq4_0-noi8"] if t in types]), out / "speed.png",
            f"CUDA decode (tg128), random Llama-3-8B shape, Q4_0 weights, {dev.get('gpu_info', '?')}")
print("\n".join(md))
print(f"wrote {out}/speed.md, speed.json, speed.png", file=sys.stderr)
