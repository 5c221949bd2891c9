#!/usr/bin/env python3
"""Passkey retrieval at long context: does a quantized KV cache still find a number hidden in filler text?

  .venv/bin/python tools/passkey.py                                   # SmolLM2-135M, 4k and 8k tokens
  .venv/bin/python tools/passkey.py --model gemma3 --lengths 8192,16384
  .venv/bin/python tools/passkey.py --caches f16,tq4_0/tq4_0 --depths 0.5 --trials 1   # quick look

A five-digit passkey is stated once at a relative depth of a prompt of the given length (the classic filler of
Mohtashami & Jaggi, "The grass is green. ...", or with --filler-text lines of a text, which do not repeat: on the
repeated sentence the coding errors of low-bit values add up instead of averaging out; --filler-text jargon takes
the KLD runs' text), then asked for; greedy
decoding must print it. Each cache configuration ("K/V" types, or one type for both) runs the same prompts through
llama-cpp-python on the patched library (CPU, flash attention on). The verdict per configuration: it retrieves the
passkey in every case where f16 does (a small model also misses some with f16; those cases say nothing about the
cache).

Each case is also scored by teacher forcing: the answer " <key>" (a space, then one token per digit with the
tokenizers of both models) is fed after the prompt, and each token's log-probability and whether greedy decoding
picks it are recorded. The first token is where the model decides to answer at all rather than to go on with
" the pass key is ..."; the digits are the retrieval. A small model at the edge of its context makes that first
choice by a fraction of a nat even with f16, so a second table counts the cases whose five digits greedy decoding
gives once the answer has begun, with their mean log-probability, and its verdict compares those with f16's.

Outputs: results/cpu/passkey-<model>.{md,json} (--out: another stem). While it runs, STEM.json.partial holds the
prompts scored so far, so that a run stopped midway keeps them (--pool reads it when named).

  .venv/bin/python tools/passkey.py --pool results/cpu/passkey-gemma3-32k*.json   # runs of one length, pooled

--pool counts, over the prompts of several runs of one model, how many of the prompts whose digits f16 gives each
cache gives too, and how far each cache moves the digits' log-probability from f16's (or --base's) on the same
prompt: a paired comparison, which single hits and misses at the edge of a model's context are too coarse for.
--pair A B sets two caches side by side on the prompts where f16 gives the digits; B may be a sum, "K/f16+f16/V",
to ask whether A's shift is the sum of a key-only and a value-only run's.
"""
import argparse
import http.client
import json
import math
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "python"))
import numpy as np  # noqa: E402
import quality  # noqa: E402  model paths, machine description

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize "
         "it. I will quiz you about it afterwards.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key? The pass key is"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
ANSWER_TOKENS = 8   # what a completion may add to the prompt (teacher forcing adds fewer: the key's tokens but one)
IN_PROCESS = "llama-cpp-python"   # the backend of runs without --server (and of runs that predate it)
DEFAULT_CACHES = "f16,q4_0,tq4_0,tq4_0/tq3_0,tq3_0"
EMULATE_K = None   # --emulate-k: a codec of tools/kv_lab.py that the keys pass through (in process only)
MODELS = {"smollm2": ("4096,8192", quality.smollm2_path), "gemma3": ("8192", quality.gemma3_path)}


def prompt(llm, n_tokens, depth, key, passage=None):
    """INTRO, filler, the needle at `depth` (0..1) of the filler, filler, QUESTION: about n_tokens tokens. The filler
    is FILLER repeated, or with `passage` the first lines of that text (the needle on a line of its own)."""
    needle = NEEDLE.format(key=key)
    fixed = len(llm.tokenize((INTRO + needle + QUESTION).encode(), add_bos=True))
    if passage is None:
        per = len(llm.tokenize(FILLER.encode(), add_bos=False))
        n = max(1, (n_tokens - fixed) // per)
        before = round(n*depth)
        return INTRO + FILLER*before + needle + FILLER*(n - before) + QUESTION
    # cut at a line end, by characters, rescaled until the tokens fit (the text's density varies)
    budget = n_tokens - fixed
    chars = min(len(passage), 8*budget)   # 8 characters a token is more than enough
    for _ in range(8):
        body = passage[:passage.rfind("\n", 0, chars) + 1]
        n = len(llm.tokenize(body.encode(), add_bos=False))
        if n <= budget:
            break
        chars = len(body)*budget // n
    if not budget*0.9 <= n <= budget:
        raise SystemExit(f"--filler-text: {n} tokens of filler where {budget} were wanted (a text too short for "
                         f"{n_tokens} tokens, or lines too long)")
    at = body.rfind("\n", 0, round(len(body)*depth)) + 1
    return INTRO + body[:at] + needle + "\n" + body[at:] + QUESTION


def filler_text(arg, cache_dir="~/.cache/ggml-tq"):
    """The text of --filler-text and what the run records of it: a file, or "jargon" for quality.py's corpus (the
    text the KLD tables are measured on; a file of that name in the working folder is not looked for)."""
    path = Path(quality.corpus(cache_dir)["path"]) if arg == "jargon" else Path(arg)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise SystemExit(f"--filler-text: {e}")
    return text, dict(text=path.name, sha256=quality.sha256(path))


def passages(text, keys, seed):
    """The filler text per key: `text` from a line start drawn by the seed and the key alone (so a key names the
    same prompt whatever the other keys and lengths of a run), wrapping around at its end."""
    if text.count("\n") < 100:
        raise SystemExit("--filler-text: fewer than 100 lines (the needle goes between lines)")
    out = {}
    for key in keys:
        start = text.find("\n", random.Random(f"{seed}-{key}").randrange(len(text))) + 1
        out[key] = text[start:] + text[:start]
    return out


def cache_label(cache, variant):
    """How a run's rows name its cache: "f16", or "f16 [-fa off]" for f16 computed with --variant "-fa off"."""
    return f"{cache} [{variant}]" if variant else cache


def run_cache(model, cache, lengths, depths, keys, threads, server=None, server_args="", variant="", filler=None,
              label=None, server_timeout=3600, on_row=None):
    """label: what the rows' cache name carries in brackets (default: the variant); on_row(row): called after
    each prompt"""
    k, _, v = cache.partition("/")
    v = v or k
    label = cache_label(cache, variant if label is None else label)
    rows = []
    for n in lengths:
        lm = (Server(server, model, k, v, n + 64, f"{server_args} {variant}", server_timeout) if server
              else InProcess(model, k, v, n + 64, threads))
        try:
            # every prompt of this length before any runs: one that leaves its answer no room in the context is
            # refused (a llama-server caps a slot at the model's training context, whatever -c asks)
            cases = []
            for d in depths:
                for key in keys:
                    text = prompt(lm, n, d, key, filler and filler[key])
                    ptoks = lm.tokenize(text.encode(), add_bos=True)
                    if len(ptoks) + ANSWER_TOKENS >= lm.n_ctx:
                        raise SystemExit(f"--lengths {n}: the prompt at depth {d}, key {key} has {len(ptoks)} tokens "
                                         f"and its answer needs {ANSWER_TOKENS} more, where the context holds "
                                         f"{lm.n_ctx}: ask for fewer")
                    cases.append((d, key, text, ptoks))
            for d, key, text, ptoks in cases:
                t0 = time.time()
                out = lm.complete(text, ptoks)
                ok = str(key) in out
                forced = lm.answer_scores(ptoks, key)
                rows.append(dict(cache=label, length=n, depth=d, key=key, ok=ok, answer=out.strip(),
                                 n_prompt=len(ptoks), seconds=time.time() - t0,
                                 **forced))
                if on_row:
                    on_row(rows[-1])
                print(f"{label:>12} n={n:<6} depth={d:<4} key={key} {'ok  ' if ok else 'MISS'} {out.strip()!r}; "
                      f"forced: first token {forced['first_logprob']:.2f} (margin {forced['first_margin']:+.2f}), "
                      f"digits {'ok' if forced['digits_ok'] else 'MISS'} {forced['digits_logprob']:.2f}", flush=True)
        finally:
            lm.close()
    return rows


def gpu_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def forced_scores(logprobs, greedy, margin):
    return dict(first_logprob=logprobs[0], first_margin=margin, digits_logprob=sum(logprobs[1:]),
                digits_ok=all(greedy[1:]), answer_logprobs=logprobs)


def answer_scores(llm, ptoks, key):
    """Teacher forcing of the answer " <key>" after the prompt tokens ptoks, which the completion just evaluated
    in llm (llama-cpp-python): the log-probability of each answer token, and whether it is the greedy choice. Only
    the last prompt token is evaluated again (its logits were overwritten by the completion's); the cache keeps the
    rest of the prompt."""
    atoks = llm.tokenize(f" {key}".encode(), add_bos=False)
    if list(llm.input_ids[:len(ptoks)]) != list(ptoks):
        llm.reset()   # the completion tokenized the prompt differently: evaluate it again
        llm.eval(ptoks[:-1])
    llm.n_tokens = len(ptoks) - 1   # llm.eval removes the cache cells from here on
    logprobs, greedy, margin = [], [], None
    for t, want in zip([ptoks[-1]] + atoks[:-1], atoks):
        llm.eval([t])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        lp = logits - top - math.log(np.exp(logits - top).sum())
        logprobs.append(float(lp[want]))
        greedy.append(int(lp.argmax()) == want)
        if margin is None:   # the first token's log-probability over the best other token's
            margin = float(lp[want] - np.delete(lp, want).max())
    return forced_scores(logprobs, greedy, margin)


class InProcess:
    """llama-cpp-python on the patched library, in this process (CPU)."""

    def __init__(self, model, k, v, n_ctx, threads):
        from ggml_tq.llama import Llama, load_llama_cpp
        make = lambda: Llama(str(model), cache_type_k=k, cache_type_v=v, n_ctx=n_ctx, n_batch=512,  # noqa: E731
                             n_threads=threads, verbose=False)
        if not EMULATE_K:
            self.llm = make()
        else:
            # --emulate-k: llama-cpp-python's Llama takes no eval callback, so its context parameters get one
            import kv_lab
            llama_cpp = load_llama_cpp()   # bound to the patched library before llama_cpp.llama loads
            import llama_cpp.llama as ll
            self.emulation = kv_lab.KeyEmulation(kv_lab.load_libs()[1], EMULATE_K)
            self.cb = llama_cpp.ggml_backend_sched_eval_callback(self.emulation)
            defaults = ll.llama_cpp.llama_context_default_params

            def with_callback():
                cp = defaults()
                cp.cb_eval = self.cb
                return cp
            ll.llama_cpp.llama_context_default_params = with_callback
            try:
                self.llm = make()
            finally:
                ll.llama_cpp.llama_context_default_params = defaults
            self.emulation.set_model(llama_cpp.llama_model_rope_type(self.llm.model))
        self.n_ctx = self.llm.n_ctx()

    def tokenize(self, text, add_bos):
        return self.llm.tokenize(text, add_bos=add_bos)

    # complete() gets the prompt as text and as tokens: llama-cpp-python's completion takes the text as the runs
    # before --server did, a server takes the tokens so that its cache holds exactly what teacher forcing extends
    def complete(self, text, ptoks):
        return self.llm.create_completion(text, max_tokens=ANSWER_TOKENS, temperature=0.0)["choices"][0]["text"]

    def answer_scores(self, ptoks, key):
        return answer_scores(self.llm, ptoks, key)

    def close(self):
        del self.llm


class Server:
    """A llama-server (--server), started for one cache configuration and spoken to over HTTP: the same prompts
    and teacher forcing on whatever backend that server runs (a GPU build, say). The prompt is sent as tokens and
    the server keeps it in its cache between requests (--swa-full, as the CPU runs have it: a sliding-window cache
    of window size could not be reused), so forcing each answer token evaluates one token. A log-probability
    comes from the server's softmax over the whole vocabulary (n_probs, before sampling), summed in float32: it
    differs from llama-cpp-python's by up to about 1e-2 nats on a large vocabulary, one reason --pool keeps
    backends apart. For a wanted token outside the N_PROBS best, the N_PROBS-th best's is recorded, an upper bound,
    and the row counts it (logprob_upper_bounds); the tables mark such means ("<=", "bounded")."""
    N_PROBS = 1000

    def __init__(self, binary, model, k, v, n_ctx, extra, timeout=3600):
        self.timeout = timeout  # seconds to answer one request
        ready_s = min(600, timeout)  # ... and to come up
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile("w", prefix="passkey-server-", suffix=".log", delete=False)
        # batches of 512 as llama-cpp-python's runs have them (a TQ cache fits its key means on the first batch)
        cmd = [binary, "-m", str(model), "-c", str(n_ctx), "-b", "512", "-ub", "512", "-np", "1", "-fa", "on",
               "--swa-full", "-ctk", k, "-ctv", v, "--host", "127.0.0.1", "--port", str(self.port)] + shlex.split(extra)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            t0 = time.time()
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"llama-server exited ({self.proc.returncode}): {shlex.join(cmd)}\n{self.tail()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.time() - t0 > ready_s:
                    raise SystemExit(f"llama-server not ready after {ready_s:g} s: {shlex.join(cmd)}\n{self.tail()}"
                                     f"{self.stack()}")
                time.sleep(0.5)
            # a slot's context, which llama-server caps at the model's training context whatever -c asks
            self.n_ctx = self.request("/props")["default_generation_settings"]["n_ctx"]
        except BaseException:   # Ctrl-C included: never leave a server holding the GPU
            self.close()
            raise

    def tail(self):
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def stack(self):
        """Where a stalled server waits: its threads' states and its main thread's backtrace (through gdb, or
        cuda-gdb with the GPU's running kernels), what a server that never comes up or never answers leaves to go
        on once it is killed. An attach that is refused (ptrace restricted) says so instead."""
        if self.proc.poll() is not None:
            return ""
        return "\n" + self.thread_states() + self.backtrace()

    def backtrace(self):
        """The main thread's frames through gdb or, on the GPU machines, which have no gdb, cuda-gdb, whose
        frames are those of a running kernel: then also the kernels that run, each one's threads by program
        counter, and the host's main thread; empty without either."""
        gdb = shutil.which("gdb") or shutil.which("cuda-gdb")
        if not gdb:
            return ""
        name = Path(gdb).name
        cuda = name == "cuda-gdb"
        wait = 40 if cuda else 20   # cuda-gdb is slower to attach
        cmds = ["-ex", "bt 40"]
        if cuda:
            # the kernels that run, and each one's threads grouped by program counter (no focus needed), which tells
            # a wait at a kernel's start (grid dependency) from its body; bt above follows cuda-gdb's focus, a
            # kernel where one runs, so the host's main thread comes last
            cmds += ["-ex", "echo @@kernels\\n", "-ex", "info cuda kernels"]
            for k in range(3):   # ids from 0; a missing one only prints an error
                cmds += ["-ex", f"echo @@kernel {k} threads\\n", "-ex", f"info cuda threads kernel {k}"]
            cmds += ["-ex", "echo @@host\\n", "-ex", "thread 1", "-ex", "bt 30"]
        try:
            r = subprocess.run([gdb, "-p", str(self.proc.pid), "-batch", "-iex", "set debuginfod enabled off"] + cmds,
                               capture_output=True, text=True, timeout=wait)
        except subprocess.TimeoutExpired:
            return f"\n{name} could not attach to the stalled server in {wait} s"
        first, *sections = r.stdout.split("@@")
        frames = [ln for ln in first.splitlines() if ln.startswith("#")]
        if frames:
            return ("\nmain thread of the stalled server:\n" + "\n".join(frames)
                    + "".join(f"\n{sec.strip()}" for sec in sections))
        why = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()][-2:]
        return f"\n{name} could not attach to the stalled server: " + " ".join(why)

    def thread_states(self):
        """Each thread of the server with its scheduler state and kernel wait channel (from /proc, no debugger
        needed). A thread that sleeps (S) waits in the kernel: a lock, a socket, a driver call that blocks. One that
        runs (R) runs host code, or waits on the GPU: CUDA's default synchronization spins while a process has fewer
        GPU contexts than cores, so only the backtrace and the GPU's utilization tell those two apart."""
        rows = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").glob("*"), key=lambda t: int(t.name)):
            try:
                comm = (task / "comm").read_text().strip()
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text().strip()
            except OSError:   # the thread ended meanwhile
                continue
            rows.append(f"{task.name} {comm} {state} {wchan if wchan not in ('', '0') else '-'}")   # 0: running
        return "threads of the stalled server (id, name, state, kernel wait):\n" + "\n".join(rows)

    def request(self, path, body=None):
        """GET path, or POST it a JSON body. A server that refuses, dies or stalls (no answer in self.timeout
        seconds) stops the run with its log, which close() then deletes."""
        url = f"http://127.0.0.1:{self.port}{path}"
        req = url if body is None else urllib.request.Request(url, json.dumps(body).encode(),
                                                              {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise SystemExit(f"llama-server {path}: {e.code} {e.read().decode(errors='replace')}\n{self.tail()}")
        except (OSError, http.client.HTTPException) as e:   # URLError, a reset or refused connection, a timeout
            reason = getattr(e, "reason", e)
            if isinstance(reason, (socket.timeout, TimeoutError)):   # socket.timeout: apart before Python 3.10
                raise SystemExit(f"llama-server did not answer {path} in {self.timeout:g} s\n{self.tail()}{self.stack()}")
            state = "running" if self.proc.poll() is None else f"exited ({self.proc.returncode})"
            raise SystemExit(f"llama-server {path}: {reason!r}, server {state}\n{self.tail()}")

    def tokenize(self, text, add_bos):
        return self.request("/tokenize", {"content": text.decode(), "add_special": add_bos})["tokens"]

    def complete(self, text, ptoks):
        return self.request("/completion", {"prompt": ptoks, "n_predict": ANSWER_TOKENS, "temperature": 0.0,
                                            "cache_prompt": True})["content"]

    def answer_scores(self, ptoks, key):
        atoks = self.tokenize(f" {key}".encode(), add_bos=False)
        logprobs, greedy, margin, bounded = [], [], None, 0
        for i, want in enumerate(atoks):
            r = self.request("/completion", {"prompt": ptoks + atoks[:i], "n_predict": 1, "temperature": 0.0,
                                             "n_probs": self.N_PROBS, "cache_prompt": True})
            top = {e["id"]: e["logprob"] for e in r["completion_probabilities"][0]["top_logprobs"]}
            if want not in top:
                bounded += 1
            logprobs.append(top.get(want, min(top.values())))
            greedy.append(max(top, key=top.get) == want)
            if margin is None:
                margin = logprobs[0] - max(lp for t, lp in top.items() if t != want)
        return dict(forced_scores(logprobs, greedy, margin), logprob_upper_bounds=bounded)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def table(rows, caches, lengths, depths, field="ok"):
    cells = [f"{n}@{d}" for n in lengths for d in depths]
    hit = {}
    for r in rows:
        c = hit.setdefault((r["cache"], f"{r['length']}@{r['depth']}"), [0, 0])
        c[0] += r[field]
        c[1] += 1
    base = {cell: hit[("f16", cell)][0] for cell in cells} if "f16" in caches else None
    out = ["| cache | " + " | ".join(cells) + " | verdict |", "|---|" + "---:|"*len(cells) + "---|"]
    for c in caches:
        line = [f"{hit[(c, cell)][0]}/{hit[(c, cell)][1]}" for cell in cells]
        verdict = ""
        if base is not None and c != "f16":
            worse = [cell for cell in cells if hit[(c, cell)][0] < base[cell]]
            verdict = "PASS" if not worse else "FAIL (" + ", ".join(worse) + ")"
        out.append(f"| {c} | " + " | ".join(line) + f" | {verdict} |")
    return "\n".join(out)


def logprob_table(rows, caches, lengths, depths):
    """Mean log-probability of the digits per cell, and of the first answer token (f16's row adds its smallest
    margin over the best other token: how close f16 itself came to not answering)."""
    cells = [(n, d) for n in lengths for d in depths]
    out = ["| cache | " + " | ".join(f"{n}@{d} digits / first" for n, d in cells) + " |", "|---|" + "---:|"*len(cells)]
    for c in caches:
        line = []
        for n, d in cells:
            rs = [r for r in rows if r["cache"] == c and r["length"] == n and r["depth"] == d]
            le = "<=" if any(r.get("logprob_upper_bounds") for r in rs) else ""
            cell = (f"{le}{np.mean([r['digits_logprob'] for r in rs]):.2f} / "
                    f"{np.mean([r['first_logprob'] for r in rs]):.2f}")
            if c == "f16":
                cell += f" (margin {min(r['first_margin'] for r in rs):+.2f})"
            line.append(cell)
        out.append(f"| {c} | " + " | ".join(line) + " |")
    return "\n".join(out)


def pooled_rows(files, base="f16", lengths=None):
    """The rows of several runs by (cache, prompt), checked as --pool says (pool(), below)."""
    seen, models, base_cases = {}, set(), {}
    for f in files:
        try:
            run = json.loads(Path(f).read_text())
            rows, model, backend = run["rows"], run["model"], run.get("backend", IN_PROCESS)
            filler = json.dumps(run.get("filler"))   # null: the repeated sentence
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--pool: {f} is not a passkey.py result ({e})")
        models.add((model, filler))
        if len(models) > 1:   # another model, or other prompts: the same key and depth mean another case
            raise SystemExit(f"--pool: {f} is a run of {model} with filler {filler}, the others of "
                             f"{sorted(models - {(model, filler)})}")
        for r in rows:
            if lengths and r["length"] not in lengths:
                continue
            cases = base_cases.setdefault(backend, set())
            case = (r["length"], r["depth"], r["key"])
            old = seen.setdefault((r["cache"], case), r)
            if old["digits_logprob"] != r["digits_logprob"] or old["ok"] != r["ok"]:
                raise SystemExit(f"{f}: {r['cache']} at {case} differs from an earlier run of the same prompt")
            if r["cache"] == base:
                cases.add(case)
    for backend, cases in base_cases.items():
        others = set().union(*(c for b, c in base_cases.items() if b != backend))
        if len(base_cases) > 1 and not cases & others:
            raise SystemExit(f"--pool: runs through {backend} and through {sorted(set(base_cases) - {backend})} pool "
                             f"only where {base} ran on each and scored the prompts they share identically")
    return seen


def weakest_digit(row):
    """The probability of the least likely digit of the answer as teacher forcing scored it (after the first token)."""
    logprobs = row.get("answer_logprobs") or []   # runs before teacher forcing have none
    return math.exp(min(logprobs[1:])) if len(logprobs) > 1 else math.nan


def pool(files, base="f16", lengths=None):
    """Markdown table over the prompts of several runs: a prompt is (length, depth, key); a cache that ran a prompt
    twice must have given the same scores (decoding is deterministic), else the runs are not comparable. Runs of
    one model through several backends (two GPUs, say) pool only where the base ran on each backend and scored the
    prompts they share identically (at least one each): then they compute alike, and the others' rows are draws of
    the same noise."""
    seen = pooled_rows(files, base, lengths)
    caches = list(dict.fromkeys(c for c, _ in seen))   # the base first, the others in the order the runs name them
    if base not in caches:
        raise SystemExit(f"--pool: no {base} rows to compare with")
    caches = [base] + [c for c in caches if c != base]
    # free answers are paired too: a cache may keep the count while flipping many prompts each way
    # where a cache loses digits the base gives, how sure the base was of them: the probability of its least likely
    # digit on each such prompt (a digit the base picks at about 1/2 flips under any other arithmetic)
    out = [f"| cache | prompts | digits where {base} gives them | {base}'s weakest digit where lost (p) | digits "
           f"elsewhere | free answers ({base}'s lost, gained) | "
           f"digits log-prob - {base}'s, mean ± s.e. (nats) |", "|---|---:|---:|---|---:|---:|---:|"]
    for c in caches:
        cases = sorted(case for cc, case in seen if cc == c and (base, case) in seen)
        ref = [seen[(base, case)] for case in cases]
        mine = [seen[(c, case)] for case in cases]
        kept = sum(m["digits_ok"] for m, b in zip(mine, ref) if b["digits_ok"])
        extra = sum(m["digits_ok"] for m, b in zip(mine, ref) if not b["digits_ok"])
        weakest = sorted(weakest_digit(b) for m, b in zip(mine, ref) if b["digits_ok"] and not m["digits_ok"])
        d = np.array([m["digits_logprob"] - b["digits_logprob"] for m, b in zip(mine, ref)])
        spread = f" ± {d.std(ddof=1)/math.sqrt(len(d)):.2f}" if len(d) > 1 else " (one prompt)"   # standard error
        lost = sum(b["ok"] and not m["ok"] for m, b in zip(mine, ref))
        gained = sum(m["ok"] and not b["ok"] for m, b in zip(mine, ref))
        free = f"{sum(m['ok'] for m in mine)}/{len(cases)}" + ("" if c == base else f" (-{lost} +{gained})")
        # a server's log-probability below its N_PROBS best is a bound: such a difference is not exact
        bound = " (bounded)" if any(r.get("logprob_upper_bounds") for r in mine + ref) else ""
        out.append(f"| {c} | {len(cases)} | {kept}/{sum(b['digits_ok'] for b in ref)} | "
                   f"{' '.join(f'{w:.2f}' for w in weakest)} | {extra}/{sum(not b['digits_ok'] for b in ref)} | {free} | "
                   + ("" if c == base else f"{d.mean():+.2f}" + spread + bound) + " |")
    return "\n".join(out)


def pair(seen, base, a, terms):
    """--pair: cache `a` against the sum of the shifts of `terms` (one cache, or several added with +: a key-only and a
    value-only run, say), prompt by prompt, on the prompts where `base` gives the digits and every cache ran."""
    names = [a] + terms
    cases = sorted(case for c, case in seen if c == base and seen[(c, case)]["digits_ok"]
                   and all((n, case) in seen for n in names))
    if len(cases) < 2:
        raise SystemExit(f"--pair: {len(cases)} prompts where {base} gives the digits and {', '.join(names)} all ran")
    shift = {n: np.array([seen[(n, case)]["digits_logprob"] - seen[(base, case)]["digits_logprob"] for case in cases])
             for n in names}
    total = sum(shift[t] for t in terms)
    rows = [(n, shift[n]) for n in names] + ([(" + ".join(terms), total)] if len(terms) > 1 else [])
    rows.append((f"{a} - ({' + '.join(terms)})" if len(terms) > 1 else f"{a} - {terms[0]}", shift[a] - total))
    out = [f"{len(cases)} prompts where {base} gives the digits", "",
           f"| cache | digits log-prob - {base}'s, mean ± s.e. (nats) |", "|---|---:|"]
    out += [f"| {n} | {d.mean():+.2f} ± {d.std(ddof=1)/math.sqrt(len(d)):.2f} |" for n, d in rows]
    if len(terms) == 1:
        ok = {n: [seen[(n, case)]["digits_ok"] for case in cases] for n in names}
        out.append(f"\ndigits only {a} gives: {sum(x and not y for x, y in zip(ok[a], ok[terms[0]]))}, only "
                   f"{terms[0]} gives: {sum(y and not x for x, y in zip(ok[a], ok[terms[0]]))}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a .gguf path")
    ap.add_argument("--lengths", help="prompt lengths in tokens (default: 4096,8192 for smollm2, 8192 for gemma3); "
                                      "with --pool, the lengths to pool (default: all)")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="relative positions of the passkey")
    ap.add_argument("--caches", default=DEFAULT_CACHES, help="cache configurations: a type, or K/V types")
    ap.add_argument("--trials", type=int, default=1, help="passkeys per length and depth")
    ap.add_argument("--seed", type=int, default=20261202,
                    help="draws the passkeys: every length and depth hides the same --trials keys, so another seed "
                         "gives other numbers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--server", metavar="LLAMA_SERVER",
                    help="run each cache through this llama-server binary instead of llama-cpp-python (a GPU build, "
                         "say); the run's JSON records it, and --pool mixes its runs with others only where the base cache "
                         "(--base) scored the prompts they share identically on both")
    ap.add_argument("--server-args", default="", help="more llama-server arguments, e.g. \"-ngl 99\"")
    ap.add_argument("--server-timeout", type=float, default=3600, metavar="S",
                    help="with --server: the seconds a server may take to answer one request (and, up to 600, to come "
                         "up) before the run stops with its log")
    ap.add_argument("--variant", default="", metavar="ARGS",
                    help="with --server: llama-server arguments that change how the same cache is computed, not what "
                         "it holds (\"-fa off\", say); its rows name the cache \"f16 [-fa off]\", and --pool sets "
                         "them beside the base's runs of the same prompts: how far f16 moves from f16 by arithmetic "
                         "alone, the floor under any cache's flips")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a llama.cpp environment switch for every cache of this run, in process or in the server "
                         "(LLAMA_TQ_K_WEIGHT=0, say); its rows name the cache \"tq4_0 [LLAMA_TQ_K_WEIGHT=0]\" as "
                         "--variant's do. Repeatable")
    ap.add_argument("--emulate-k", metavar="CODEC",
                    help="in process: pass each layer's keys through this codec of tools/kv_lab.py (\"tq6_0 weighted "
                         "search\", say: a key type the library lacks) before an f16 K cache stores them; give the "
                         "caches as f16/V. Its rows name the cache \"f16/tq4_0 [emulate-k ...]\"")
    ap.add_argument("--filler-text", metavar="FILE",
                    help="fill the prompts with lines of this text instead of the repeated sentence, from a line "
                         "drawn by --seed and the key; \"jargon\": the text of tools/quality.py's KLD runs (the "
                         "Jargon File, fetched once into ~/.cache/ggml-tq)")
    ap.add_argument("--out", help="results/cpu/passkey-<model> by default (.md and .json are written); with "
                                  "--pool, a .md to write the table to")
    ap.add_argument("--pool", nargs="+", metavar="JSON", help="pool the prompts of these runs (nothing is run)")
    ap.add_argument("--base", default="f16", help="with --pool: the cache the others are compared with")
    ap.add_argument("--pair", nargs=2, metavar=("A", "B"),
                    help="with --pool: A against B prompt by prompt instead of the table; B may add caches with + "
                         "(\"tq4_0/f16+f16/tq3_0\": does A's shift equal the sum of theirs?)")
    a = ap.parse_args()
    cmd = shlex.join(["tools/passkey.py"] + sys.argv[1:])
    if a.pair and not a.pool:
        raise SystemExit("--pair needs --pool (it compares the runs' rows)")
    pool_lengths = a.lengths and [int(x) for x in a.lengths.split(",")]
    if a.pool and a.pair:
        print(pair(pooled_rows(a.pool, a.base, pool_lengths), a.base, a.pair[0], a.pair[1].split("+")))
        return
    if a.pool:
        md = pool(a.pool, a.base, pool_lengths)
        if a.out:
            Path(a.out).write_text(f"# Passkey prompts of several runs, pooled\n\n`.venv/bin/python {cmd}`\n\n{md}\n")
        print(md)
        return
    if a.variant and not a.server:
        raise SystemExit("--variant needs --server (its arguments are llama-server's)")
    for e in a.env:
        name, eq, value = e.partition("=")
        if not eq or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise SystemExit(f"--env {e!r}: expected NAME=VALUE")
        os.environ[name] = value  # llama.cpp reads its switches when a context (or a server's) is made
    if a.emulate_k:
        if a.server:
            raise SystemExit("--emulate-k runs in process, not with --server")
        if any(c.partition("/")[0] != "f16" for c in a.caches.split(",")):
            raise SystemExit("--emulate-k needs f16 keys in the cache (--caches f16/V): the codec's keys are stored there")
        global EMULATE_K
        EMULATE_K = a.emulate_k
    label = " ".join([a.variant] + a.env + ([f"emulate-k {a.emulate_k}"] if a.emulate_k else [])).strip()
    if a.model in MODELS:
        default_lengths, find = MODELS[a.model]
        model, name = find(), a.model
    else:
        default_lengths, model, name = "4096", Path(a.model), Path(a.model).stem
        if not model.is_file():
            raise SystemExit(f"model file not found: {model}")
    lengths = [int(x) for x in (a.lengths or default_lengths).split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    caches = a.caches.split(",")
    for c in caches:
        for t in c.split("/"):
            if t not in quality.BITS and t not in ("f32", "bf16", "q4_1", "q5_0"):
                raise SystemExit(f"unknown cache type {t!r} in {c!r}")
    rng = random.Random(a.seed)
    keys = [rng.randrange(10000, 100000) for _ in range(a.trials)]
    filler, filler_info = None, None
    if a.filler_text:
        text, filler_info = filler_text(a.filler_text)
        filler = passages(text, keys, a.seed)
    out = Path(a.out) if a.out else ROOT / "results" / "cpu" / f"passkey-{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # --out names both files: a stem ("...-d0.8-rows" has no suffix to replace), or either file
    stem = out.with_suffix("") if out.suffix in (".md", ".json") else out
    md_path, json_path = Path(f"{stem}.md"), Path(f"{stem}.json")
    m = quality.machine()
    # a server's arguments say where it computes (-ngl 99: the GPU, if this machine has one)
    backend = f"llama-server {a.server_args} on {gpu_name() or m['cpu']}" if a.server else IN_PROCESS

    def result(rows):
        return json.dumps(dict(model=str(model.name), command=cmd, machine=m, backend=backend, filler=filler_info,
                               rows=rows), indent=1) + "\n"

    # the prompts so far, after each one (a 32k run on two cores takes hours): a run that is stopped leaves them
    # in STEM.json.partial (not *.json, so that a glob of finished runs for --pool does not take it twice), which
    # --pool reads when named; written whole or not at all; the finished run removes it
    partial = Path(f"{stem}.json.partial")
    rows = []

    def on_row(row):
        rows.append(row)
        tmp = Path(f"{partial}.tmp")
        tmp.write_text(result(rows))
        os.replace(tmp, partial)

    for c in caches:
        run_cache(model, c, lengths, depths, keys, a.threads, a.server, a.server_args, a.variant, filler,
                  label, a.server_timeout, on_row)
    caches = [cache_label(c, label) for c in caches]
    md = table(rows, caches, lengths, depths)
    md_forced = table(rows, caches, lengths, depths, "digits_ok")
    md_forced += "\n\n" + logprob_table(rows, caches, lengths, depths)
    where = f"through `{backend}`" if a.server else f"{m['nproc']} cores of {m['cpu']}"
    head = (f"# Passkey retrieval, {name}\n\n`.venv/bin/python {cmd}`, {where}; cells: passkeys found "
            f"of those hidden (length in tokens @ relative depth; {a.trials} keys each, greedy).\n\n")
    forced_head = ("\nGiven the answer's first token (a space), cases whose five digits greedy decoding gives; then the mean "
                   "log-probability of the digits, and of the first token with f16's margin for it (nats):\n\n")
    md_path.write_text(head + md + "\n" + forced_head + md_forced + "\n")
    json_path.write_text(result(rows))
    partial.unlink(missing_ok=True)
    print(md + "\n\n" + md_forced)
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
