"""The patched llama.cpp on the CPU, through its real binaries and through llama-cpp-python.

Needs tools/setup.sh to have run (build/llama.cpp/bin and .venv): the README's test command does it.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ggml_tq import llama as tql
from ggml_tq._types import GGML_TYPE_TQ4_0, type_info

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "build" / "llama.cpp" / "bin"
SRC = ROOT / "build" / "llama.cpp-src"
MODEL = tql.default_model()
PROMPT = "The capital of France is"


def run(*args, timeout=600, env=None, check=False):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{args[0]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def cli(*args, **kw):
    return run(BIN / "llama-cli", "-m", MODEL, "-st", "--temp", "0", "-t", "2", "-fa", "on", *args, **kw)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """Random-weight llama GGUFs of a given head size (speed and shape tests only: the weights mean nothing)."""
    made = {}

    def make(head_dim: int, heads: int = 4, kv_heads: int = 2) -> Path:
        if head_dim not in made:
            out = tmp_path_factory.mktemp("models") / f"random-hd{head_dim}.gguf"
            run(sys.executable, ROOT / "tools" / "make_random_llama.py", out, "--layers", 1, "--embd", head_dim * heads,
                "--ff", 256, "--heads", heads, "--kv-heads", kv_heads, "--vocab", 1000, "--ctx", 4096,
                env={"PYTHONPATH": str(SRC / "gguf-py")}, check=True)
            made[head_dim] = out
        return made[head_dim]
    return make


# ---- llama.cpp's own tests -----------------------------------------------------------------------------

def test_quantize_fns_covers_tq_types():
    p = run(BIN / "test-quantize-fns", "-v", check=True)
    for t in ("tq4_0", "tq3_0", "tqv2_0", "tq6_0"):
        assert f"Testing {t}" in p.stdout
        for what in ("absolute quantization error", "reference implementation error", "dot product error"):
            assert any(line.startswith(t) and what in line and "ok" in line for line in p.stdout.splitlines()), (t, what)


def test_backend_ops_cpu_runs_every_tq_case():
    # -b CPU compares the CPU with itself: this proves the ops run and are supported, not that they are right
    p = run(BIN / "test-backend-ops", "-b", "CPU", "-p", "tq[346]_0|tqv2_0", check=True)
    out = p.stdout
    for op in ("FLASH_ATTN_EXT", "SET_ROWS", "CPY", "GET_ROWS", "MUL_MAT"):
        assert f"  {op}(" in out, op
    assert "type_K=tq4_0" in out and "type_K=tq3_0" in out and "type_V=tqv2_0" in out and "type_K=tq6_0" in out
    assert "1/1 backends passed" in out


def test_cpu_flash_attention_matches_dequantized_reference(tmp_path):
    exe = tmp_path / "test-tq-flash-attn"
    run("g++", "-O2", "-std=c++17", ROOT / "tests/c/test-tq-flash-attn.cpp", "-I", SRC / "ggml/include",
        "-L", BIN, "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{BIN}", "-o", exe, check=True)
    p = run(exe, check=True)
    assert p.stdout.strip().endswith("0 failed")


# ---- the command-line tools ------------------------------------------------------------------------------

SHORT_QUESTION = "What is the capital of France? Answer in one sentence."
LONG_QUESTION = ("I am studying the geography of Europe and its countries, their borders, rivers and largest cities "
                 "for an exam next week. What is the capital of France? Answer in one sentence.")


# tq4_0/tqv2_0 (3.25 bits per value) answers the short question, greedily, with "La Défense du Québec ... is the
# capital of Canada" on this 135M model, while f16 keys with tqv2_0 values, tq4_0, tq3_0 and q4_0 say Paris, and so
# does tq4_0/tqv2_0 for the longer question and for rephrasings ("Which city is the capital of France?"). One
# greedy answer flipping is within what its KLD says (same top token 83 % of the time, README); the test checks
# the mix runs end to end and answers, on the longer question.
@pytest.mark.parametrize("cache,question", [("tq4_0", SHORT_QUESTION), ("tq3_0", SHORT_QUESTION),
                                            ("tq4_0/tqv2_0", LONG_QUESTION), ("tq6_0/tq4_0", SHORT_QUESTION)])
def test_cli_generates_with_tq_cache(cache, question):
    k, _, v = cache.partition("/")
    v = v or k
    p = cli("-p", question, "-n", "24", "-ctk", k, "-ctv", v, "-lv", "4", check=True)
    assert "Paris" in p.stdout
    log = p.stdout + p.stderr
    assert f"K ({k})" in log and f"V ({v})" in log
    assert "attn_rot_k = 0" in log  # TQ rotates its own blocks: upstream's rotation stays off


def test_cli_rejects_unknown_cache_type_listing_valid_ones():
    p = cli("-p", "hi", "-n", "1", "-ctk", "tq5_0")
    assert p.returncode != 0
    msg = p.stdout + p.stderr
    assert "tq5_0" in msg and "tq4_0" in msg and "tq3_0" in msg and "tqv2_0" in msg and "tq6_0" in msg and "q8_0" in msg


def test_unsupported_head_size_is_refused_with_its_size(random_model):
    model = random_model(80)  # head size 80: not a multiple of the 64-value TQ block
    p = run(BIN / "llama-cli", "-m", model, "-st", "-p", "hi", "-n", "1", "-fa", "on", "-ctk", "tq4_0", "-ctv", "tq4_0")
    assert p.returncode != 0
    assert "n_embd_head_k=80" in p.stdout + p.stderr


@pytest.mark.parametrize("head_dim", [128, 256])
def test_tq_cache_runs_at_head_sizes_128_and_256(random_model, head_dim):
    model = random_model(head_dim)
    p = run(BIN / "llama-cli", "-m", model, "-st", "-p", "hi there", "-n", "8", "--temp", "0", "-fa", "on",
            "-ctk", "tq3_0", "-ctv", "tq4_0", "-t", "2", check=True)
    assert "Generation:" in p.stdout + p.stderr


def test_perplexity_takes_tq_cache(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 4)
    p = run(BIN / "llama-perplexity", "-m", MODEL, "-f", text, "-c", "128", "--chunks", "2", "-t", "2",
            "-fa", "on", "-ctk", "tq4_0", "-ctv", "tq4_0", check=True)
    assert "Final estimate: PPL" in p.stdout + p.stderr


def test_tq_keys_are_centered_and_that_lowers_perplexity():
    # key centering (patch 0009) is on by default for TQ keys; on real text it must pay for itself. On
    # SmolLM2 and this corpus it takes tq3_0's PPL from ~16.1 to ~14.5 (f16 ~12.5) over two 1024-token chunks;
    # here two 256-token chunks of the same kind of text (README's corpus is not fetched by the tests)
    text = Path(__file__).resolve().parents[1] / "README.md"
    ppl = {}
    for center in ("1", "0"):
        p = run(BIN / "llama-perplexity", "-m", MODEL, "-f", text, "-c", "256", "--chunks", "2", "-t", "2",
                "-fa", "on", "-ctk", "tq3_0", "-ctv", "tq3_0", "-lv", "4", env={"LLAMA_TQ_K_CENTER": center}, check=True)
        out = p.stdout + p.stderr
        assert f"key centering = {center}" in out
        ppl[center] = float(out.split("Final estimate: PPL = ")[1].split()[0])
    assert ppl["1"] < ppl["0"], ppl


def test_tq_key_weighting_leaves_the_scores_alone():
    # key weighting (patch 0009) stores (k - m)*w and attends with q/w. By default it weights only KV heads whose
    # fitted statistics predict a large gain, none of SmolLM2's: PPL identical to no weighting. LLAMA_TQ_K_WEIGHT=2
    # weights every head; the scores are then unchanged up to the quantization error, which moves where it falls,
    # so PPL moves a little (32.5 to 33.6 here). A query not divided by the weights gave 544.
    text = Path(__file__).resolve().parents[1] / "README.md"
    ppl = {}
    for weight in ("0", "1", "2"):
        p = run(BIN / "llama-perplexity", "-m", MODEL, "-f", text, "-c", "256", "--chunks", "2", "-t", "2",
                "-fa", "on", "-ctk", "tq4_0", "-ctv", "tq4_0", "-lv", "4", env={"LLAMA_TQ_K_WEIGHT": weight}, check=True)
        out = p.stdout + p.stderr
        assert f"key centering = 1, weighting = {int(weight != '0')}" in out
        ppl[weight] = float(out.split("Final estimate: PPL = ")[1].split()[0])
    assert ppl["1"] == ppl["0"], ppl
    assert ppl["2"] != ppl["0"] and abs(ppl["2"] / ppl["0"] - 1) < 0.10, ppl


def test_bench_takes_tq_cache_types():
    p = run(BIN / "llama-bench", "-m", MODEL, "-p", "16", "-n", "4", "-r", "1", "-t", "2", "-fa", "1",
            "-ctk", "tq4_0", "-ctv", "tq3_0", "-o", "json", check=True)
    rows = json.loads(p.stdout)
    assert [(r["type_k"], r["type_v"]) for r in rows] == [("tq4_0", "tq3_0")] * 2
    assert all(r["avg_ts"] > 0 for r in rows)


# ---- Python: llama-cpp-python on the patched library --------------------------------------------------------

@pytest.fixture(scope="module")
def llm():
    return tql.Llama(str(MODEL), cache_type_k="tq4_0", cache_type_v="tq4_0", n_ctx=512, n_threads=2, verbose=False)


def test_python_llama_completes_with_tq_cache(llm):
    out = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)
    assert "Paris" in out["choices"][0]["text"]
    assert (llm.context_params.type_k, llm.context_params.type_v) == (GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0)


def test_python_llama_rejects_bad_type_name():
    with pytest.raises(ValueError, match="tq4_0.*tq3_0"):
        tql.Llama(str(MODEL), cache_type_k="tq5_0")


def test_passkey_teacher_forcing_equals_a_fresh_evaluation(llm):
    """tools/passkey.py scores the answer by teacher forcing after its completion, reusing the prompt's cache
    cells: each log-probability must be what the prompt and the answer so far give from an empty cache."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    key = 31966
    text = passkey.prompt(llm, 400, 0.5, key)
    ptoks = llm.tokenize(text.encode(), add_bos=True)
    atoks = llm.tokenize(f" {key}".encode(), add_bos=False)
    llm.reset()
    llm.create_completion(text, max_tokens=8, temperature=0.0)
    got = passkey.answer_scores(llm, ptoks, key)
    # the same batches from an empty cache (the key means and weights are fitted on the first batch: it must be
    # the prompt). Teacher forcing evaluates the last prompt token again, alone: on the decode path its K and V
    # round otherwise in the last bits, which a quantized cache can turn into other codebook indices, so the
    # scores match a fresh evaluation that does the same exactly, and one that does not to that rounding
    # (0.008 nats on the first answer token here, where the gate weights some of SmolLM2's KV heads on this
    # prompt; 0 with LLAMA_TQ_K_WEIGHT=0)
    def fresh(redo_last):
        lps, greedy = [], []
        llm.reset()
        llm.eval(ptoks)
        if redo_last:
            llm.n_tokens = len(ptoks) - 1
            llm.eval(ptoks[-1:])
        for t in atoks:
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
            lps.append(logits[t] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
            greedy.append(int(logits.argmax()) == t)
            llm.eval([t])
        return lps, greedy
    want, greedy = fresh(True)
    np.testing.assert_allclose(got["answer_logprobs"], want, atol=1e-5)
    assert got["digits_ok"] == all(greedy[1:])
    assert got["digits_logprob"] == pytest.approx(sum(want[1:]), abs=1e-4)
    np.testing.assert_allclose(got["answer_logprobs"], fresh(False)[0], atol=2e-2)


def test_passkey_server_scores_as_in_process(llm):
    """tools/passkey.py --server: llama-server's completion and teacher forcing give what llama-cpp-python gives on
    the same prompt, cache types and batches."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    key = 31966
    text = passkey.prompt(llm, 400, 0.5, key)
    ptoks = llm.tokenize(text.encode(), add_bos=True)
    llm.reset()
    out = llm.create_completion(text, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    want = passkey.answer_scores(llm, ptoks, key)
    srv = passkey.Server(str(BIN / "llama-server"), MODEL, "tq4_0", "tq4_0", 512, "-t 2")
    try:
        assert srv.tokenize(text.encode(), add_bos=True) == list(ptoks)
        assert srv.complete(text, ptoks) == out
        got = srv.answer_scores(ptoks, key)
    finally:
        srv.close()
    np.testing.assert_allclose(got["answer_logprobs"], want["answer_logprobs"], atol=2e-3)
    assert got["digits_ok"] == want["digits_ok"] and got["logprob_upper_bounds"] == 0
    assert got["first_margin"] == pytest.approx(want["first_margin"], abs=2e-3)
    with pytest.raises(SystemExit, match="llama-server exited"):   # a server that does not start says why
        passkey.Server(str(BIN / "llama-server"), MODEL, "tq4_0", "tq5_0", 512, "-t 2")


def test_passkey_server_that_stalls_is_stopped_with_its_log(tmp_path):
    """A llama-server that comes up and then never answers (one GPU run stalled so): tools/passkey.py stops at
    --server-timeout, naming the request and showing the server's log, instead of waiting an hour."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    fake = tmp_path / "llama-server"
    fake.write_text(f"""#!{sys.executable}
import http.server, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{{"default_generation_settings": {{"n_ctx": 512}}}}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        time.sleep(3600)
print("fake server: stalls on every request", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")
    fake.chmod(0o755)
    srv = passkey.Server(str(fake), MODEL, "f16", "f16", 512, "", timeout=60)   # time to come up on a busy machine
    srv.timeout = 2
    try:
        t0 = time.time()
        with pytest.raises(SystemExit, match=r"(?s)did not answer /tokenize in 2 s.*fake server: stalls") as stop:
            srv.tokenize(b"The pass key is", add_bos=True)
        assert time.time() - t0 < 30
        # and where it waits, where gdb can say so (the fake server's main thread: in the interpreter), or why gdb
        # could not (an attach that ptrace restrictions refuse)
        msg = str(stop.value)
        stack = re.search(r"main thread of the stalled server:\n((?:#.*\n?)+)", msg)
        assert re.search(r"threads of the stalled server.*:\n\d+ \S+ [RSD]", msg), msg[-1500:]
        if shutil.which("gdb") or shutil.which("cuda-gdb"):
            assert (stack and "#0" in stack.group(1)) or "could not attach to the stalled server" in msg, msg[-1500:]
        else:
            assert stack is None
        srv.proc.kill()   # a server that dies during a request: its exit status and log
        srv.proc.wait()
        with pytest.raises(SystemExit, match=r"(?s)llama-server /tokenize: .*exited.*fake server: stalls"):
            srv.tokenize(b"The pass key is", add_bos=True)
    finally:
        srv.close()
    assert srv.proc.poll() is not None


def test_passkey_length_beyond_a_server_slot():
    """llama-server caps a slot at the model's training context (8192 tokens for SmolLM2) whatever -c asks: run_cache
    reads the slot's size from the server and refuses a prompt that does not fit with its answer, naming that size,
    before sending any (rather than the server's error on the first prompt that overflows)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    with pytest.raises(SystemExit, match=r"--lengths 9000: .* has \d+ tokens .* the context holds 8192"):
        passkey.run_cache(MODEL, "f16", [9000], [0.5], [31966], 2, server=str(BIN / "llama-server"),
                          server_args="-t 2")


def test_passkey_answer_room_checked_before_any_prompt_runs(monkeypatch):
    """run_cache tokenizes every prompt of a length first and refuses, before any runs, one that leaves fewer than
    ANSWER_TOKENS + 1 positions of the context free (a completion stops short of the last one)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    ran = []

    class Fake:   # one token a word; the prompt for key 22222 is 50 tokens longer than the others
        n_ctx = None

        def __init__(self, *args):
            pass

        def tokenize(self, text, add_bos):
            text = text.decode()
            return [0] * (len(text.split()) + add_bos + (50 if "22222" in text and passkey.FILLER in text else 0))

        def complete(self, text, ptoks):
            ran.append(len(ptoks))
            return " 11111."

        def answer_scores(self, ptoks, key):
            return dict(first_logprob=0.0, first_margin=1.0, digits_ok=True, digits_logprob=0.0)

        def close(self):
            pass

    monkeypatch.setattr(passkey, "InProcess", Fake)
    n = len(Fake().tokenize(passkey.prompt(Fake(), 300, 0.5, 11111).encode(), True))
    Fake.n_ctx = n + passkey.ANSWER_TOKENS
    with pytest.raises(SystemExit, match=f"has {n} tokens .* the context holds {Fake.n_ctx}"):
        passkey.run_cache("m", "f16", [300], [0.5], [11111], 2)
    Fake.n_ctx += 1
    assert len(passkey.run_cache("m", "f16", [300], [0.5], [11111], 2)) == 1 and ran == [n]
    ran.clear()
    with pytest.raises(SystemExit, match=f"key 22222 has {n + 50} tokens"):
        passkey.run_cache("m", "f16", [300], [0.5], [11111, 22222], 2)
    assert ran == []


def test_passkey_pool_pairs_prompts_across_runs(tmp_path):
    """--pool compares each cache with the base on the prompts both ran, and refuses runs that disagree."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey

    def row(cache, depth, lp, ok=True):   # the weakest digit: lp itself
        return dict(cache=cache, length=100, depth=depth, key=12345, ok=ok, digits_ok=ok, digits_logprob=lp,
                    answer_logprobs=[-0.5, lp, 0.0])

    def run_json(*rows, model="m.gguf"):
        return json.dumps({"model": model, "rows": list(rows)})

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(run_json(row("f16", 0.1, -1.0), row("f16", 0.5, -2.0, ok=False), row("tq4_0", 0.1, -1.5),
                          row("tq4_0", 0.5, -1.0), row("q8_0", 0.1, -1.0, ok=False), row("q8_0", 0.5, -2.0)))
    b.write_text(run_json(row("f16", 0.5, -2.0, ok=False), row("q4_0", 0.5, -3.0, ok=False)))
    lines = {l.split(" | ")[0].strip("| "): l.split(" | ") for l in passkey.pool([a, b]).splitlines()[2:]}
    # prompts, kept, f16's weakest digit where lost, extra, free answers
    assert lines["tq4_0"][1:6] == ["2", "1/1", "", "1/1", "2/2 (-0 +1)"]
    assert lines["q8_0"][2:6] == ["0/1", "0.37", "1/1", "1/2 (-1 +1)"]   # f16's e^-1; each prompt flipped
    assert lines["f16"][5] == "1/2"
    assert lines["tq4_0"][6].startswith("+0.25 ± 0.75")       # (-0.5 + 1.0) / 2, s.e. 1.06/sqrt(2)
    assert lines["q4_0"][1:6] == ["1", "0/0", "", "0/1", "0/1 (-0 +0)"]
    c = tmp_path / "c.json"   # --lengths keeps one length's prompts of runs that hold several
    c.write_text(run_json(dict(row("f16", 0.1, -1.0), length=200), dict(row("tq4_0", 0.1, -9.0), length=200)))
    assert passkey.pool([a, b, c], lengths=[100]) == passkey.pool([a, b])
    assert "| tq4_0 | 3 |" in passkey.pool([a, b, c])
    # a backend none of whose rows are of the lengths pooled does not count as one
    c.write_text(json.dumps({"model": "m.gguf", "backend": "gpu", "rows": [dict(row("q4_0", 0.1, -1.0), length=200)]}))
    assert passkey.pool([a, b, c], lengths=[100]) == passkey.pool([a, b])
    b.write_text(run_json(row("f16", 0.5, -2.5, ok=False)))
    with pytest.raises(SystemExit, match="differs"):
        passkey.pool([a, b])
    b.write_text(run_json(model="other.gguf"))
    with pytest.raises(SystemExit, match="other.gguf"):
        passkey.pool([a, b])
    # the same model on another backend: pooled only where the base ran there too and scored alike
    b.write_text(json.dumps({"model": "m.gguf", "backend": "llama-server -ngl 99",
                             "rows": [row("q4_0", 0.5, -3.0, ok=False)]}))
    with pytest.raises(SystemExit, match="llama-server -ngl 99"):
        passkey.pool([a, b])
    b.write_text(json.dumps({"model": "m.gguf", "backend": "llama-server -ngl 99",
                             "rows": [row("f16", 0.5, -2.0, ok=False), row("q4_0", 0.5, -3.0, ok=False)]}))
    assert "| q4_0 | 1 |" in passkey.pool([a, b])
    b.write_text(json.dumps({"model": "m.gguf", "backend": "llama-server -ngl 99",
                             "rows": [row("f16", 0.5, -2.0001, ok=False), row("q4_0", 0.5, -3.0, ok=False)]}))
    with pytest.raises(SystemExit, match="differs"):
        passkey.pool([a, b])
    with pytest.raises(SystemExit, match="not a passkey.py result"):
        passkey.pool([a, tmp_path / "missing.json"])
    # f16 computed another way (--variant) pools beside f16, which leads the table whatever the files' order
    b.write_text(run_json(row("f16 [-fa off]", 0.1, -0.5, ok=False), row("f16 [-fa off]", 0.5, -2.0)))
    table = passkey.pool([b, a]).splitlines()[2:]
    assert [l.split(" | ")[0].strip("| ") for l in table][:2] == ["f16", "f16 [-fa off]"]
    assert table[1].split(" | ")[5] == "1/2 (-1 +1)"


def test_passkey_pair(tmp_path):
    """--pair: one cache against another, or against the sum of several caches' shifts, prompt by prompt, on the
    prompts where the base gives the digits and all of them ran."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey

    def row(cache, depth, lp, ok=True):
        return dict(cache=cache, length=100, depth=depth, key=12345, ok=ok, digits_ok=ok, digits_logprob=lp)

    a = tmp_path / "a.json"
    a.write_text(json.dumps({"model": "m.gguf", "rows": [
        row("f16", 0.1, -1.0), row("f16", 0.5, -2.0), row("f16", 0.9, -3.0, ok=False),
        row("kv", 0.1, -2.0), row("kv", 0.5, -2.5, ok=False), row("kv", 0.9, -9.0),
        row("k", 0.1, -1.5), row("k", 0.5, -2.0), row("k", 0.9, -9.0),
        row("v", 0.1, -1.0), row("v", 0.5, -2.5)]}))   # v did not run depth 0.9
    seen = passkey.pooled_rows([a])
    lines = passkey.pair(seen, "f16", "kv", ["k", "v"]).splitlines()
    assert lines[0] == "2 prompts where f16 gives the digits"   # depth 0.9: f16 misses the digits
    assert "| kv | -0.75 ± 0.25 |" in lines                      # shifts -1.0, -0.5
    assert "| k + v | -0.50 ± 0.00 |" in lines                   # -0.5 + 0, 0 + -0.5
    assert "| kv - (k + v) | -0.25 ± 0.25 |" in lines
    one = passkey.pair(seen, "f16", "kv", ["k"])
    assert "| kv - k | -0.50 ± 0.00 |" in one and "digits only kv gives: 0, only k gives: 1" in one
    with pytest.raises(SystemExit, match="1 prompts"):   # no standard error from one prompt
        passkey.pair({key: r for key, r in seen.items() if key[1][1] != 0.5}, "f16", "kv", ["k"])
    with pytest.raises(SystemExit, match="0 prompts .* missing"):
        passkey.pair(seen, "f16", "kv", ["missing"])
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "passkey.py"), "--pair", "kv", "k"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "--pair needs --pool" in r.stderr


def test_passkey_prose_filler(tmp_path):
    """--filler-text: lines of a text around the needle, about the asked length, from a line drawn per key; runs
    with other filler are not pooled with the repeated sentence's."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    import random

    class Words:   # a tokenizer of whitespace-separated words
        def tokenize(self, b, add_bos):
            return [0]*add_bos + b.split()

    lm = Words()
    text = "".join(f"line {i} " + "word "*9 + "\n" for i in range(20000))   # keys above 19999: never in the text
    chunks = passkey.passages(text, [55555, 66666], 1)
    assert chunks[55555] != chunks[66666] and all(c.startswith("line ") for c in chunks.values())
    # the seed and the key alone decide a key's text, whatever the other keys of the run
    assert passkey.passages(text, [66666], 1)[66666] == chunks[66666] != passkey.passages(text, [66666], 2)[66666]
    for depth in (0.1, 0.5, 0.9):
        p = passkey.prompt(lm, 2000, depth, 55555, chunks[55555])
        needle = passkey.NEEDLE.format(key=55555)
        assert p.startswith(passkey.INTRO) and p.endswith(passkey.QUESTION) and p.count("55555") == 2
        assert abs(len(lm.tokenize(p.encode(), True)) - 2000) <= 20
        body = p[len(passkey.INTRO):-len(passkey.QUESTION)]
        at = body.index(needle)
        assert (at == 0 or body[at - 1] == "\n") and body[at + len(needle)] == "\n"
        assert abs(at/(len(body) - len(needle) - 1) - depth) < 0.02
    with pytest.raises(SystemExit, match="fewer than 100 lines"):
        passkey.passages(text.replace("\n", " "), [55555], 1)
    short = passkey.passages(text[:text.index("line 150 ")], [55555], 1)[55555]   # 150 lines, about 1650 tokens
    with pytest.raises(SystemExit, match="tokens of filler"):
        passkey.prompt(lm, 2000, 0.5, 55555, short)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    row = dict(cache="f16", length=100, depth=0.5, key=1, ok=True, digits_ok=True, digits_logprob=-1.0)
    a.write_text(json.dumps({"model": "m.gguf", "rows": [row]}))
    b.write_text(json.dumps({"model": "m.gguf", "filler": {"text": "t.txt", "sha256": "0"}, "rows": [row]}))
    with pytest.raises(SystemExit, match="t.txt"):
        passkey.pool([a, b])
    assert "| f16 | 1 |" in passkey.pool([b, b])


def test_passkey_filler_text_missing(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "passkey.py"), "--filler-text", str(tmp_path / "none.txt"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0 and "--filler-text:" in r.stderr and "none.txt" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out.json").exists()


def test_passkey_filler_text_jargon(tmp_path, monkeypatch):
    """--filler-text jargon reads the KLD runs' corpus and records it under the name a copy of the file would have,
    so runs made with the file and with the word pool together."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    f = tmp_path / "jargon.txt"
    f.write_text("a line\n" * 3)
    monkeypatch.setattr(passkey.quality, "corpus", lambda cache_dir: {"path": str(f)})
    assert passkey.filler_text("jargon") == passkey.filler_text(str(f)) == (
        "a line\n" * 3, {"text": "jargon.txt", "sha256": passkey.quality.sha256(f)})
    with pytest.raises(SystemExit, match="--filler-text:.*jargon2"):
        passkey.filler_text(str(tmp_path / "jargon2"))


def test_passkey_variant_needs_a_server():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "passkey.py"), "--variant", "-fa off"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--variant needs --server" in r.stderr


def test_passkey_stopped_run_keeps_its_prompts(tmp_path, monkeypatch):
    """A run writes STEM.json.partial after each prompt, so that one stopped midway (hours at 32k on the CPU) keeps
    what it scored; the finished run writes STEM.json and removes the partial file."""
    sys.path.insert(0, str(ROOT / "tools"))
    import passkey
    stop_at = [2]

    class Fake:   # one token a word
        n_ctx = 10000

        def __init__(self, *args):
            pass

        def tokenize(self, text, add_bos):
            return [0] * (len(text.decode().split()) + add_bos)

        def complete(self, text, ptoks):
            stop_at[0] -= 1
            if stop_at[0] < 0:
                raise KeyboardInterrupt
            return " 11111."

        def answer_scores(self, ptoks, key):
            return dict(first_logprob=-0.5, first_margin=1.0, digits_ok=True, digits_logprob=-0.25)

        def close(self):
            pass

    monkeypatch.setattr(passkey, "InProcess", Fake)
    out = tmp_path / "pk"
    argv = ["passkey.py", "--lengths", "300", "--caches", "f16", "--depths", "0.25,0.75", "--trials", "2",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        passkey.main()
    partial = tmp_path / "pk.json.partial"
    run = json.loads(partial.read_text())
    assert [(r["depth"], r["digits_logprob"]) for r in run["rows"]] == [(0.25, -0.25)] * 2
    assert run["command"].startswith("tools/passkey.py --lengths 300") and not (tmp_path / "pk.json").exists()
    assert len(passkey.pooled_rows([partial])) == 2   # --pool reads it as a run
    stop_at[0] = 4
    passkey.main()
    assert len(json.loads((tmp_path / "pk.json").read_text())["rows"]) == 4 and not partial.exists()


def test_passkey_env_names_its_rows(tmp_path):
    # --env sets a llama.cpp switch for every cache of the run; its rows carry it in the cache's name, so that
    # --pool sets them beside the same cache without it
    tool = [sys.executable, str(ROOT / "tools" / "passkey.py")]
    r = subprocess.run(tool + ["--env", "LLAMA_TQ_K_WEIGHT"], capture_output=True, text=True)
    assert r.returncode != 0 and "expected NAME=VALUE" in r.stderr
    out = tmp_path / "pk"
    r = subprocess.run(tool + ["--lengths", "1024", "--caches", "tq4_0", "--depths", "0.5", "--trials", "1",
                               "--env", "LLAMA_TQ_K_WEIGHT=0", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [x["cache"] for x in rows] == ["tq4_0 [LLAMA_TQ_K_WEIGHT=0]"]


def _next_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[llm.n_tokens - 1], copy=True)


def test_state_round_trip_reproduces_next_token_logits(llm, tmp_path):
    tokens = llm.tokenize(b"Once upon a time, in a small village by the sea,")
    ref = _next_logits(llm, tokens)
    path = tmp_path / "state.bin"
    tql.save_state_file(llm, path)
    _next_logits(llm, llm.tokenize(b"Something else entirely, to overwrite the cache."))
    tql.load_state_file(llm, path)
    np.testing.assert_array_equal(np.array(llm.scores[llm.n_tokens - 1]), ref)
    # the restored cache continues exactly like the original one
    llm.eval(llm.tokenize(b" there", add_bos=False))
    cont = np.array(llm.scores[llm.n_tokens - 1], copy=True)
    _next_logits(llm, tokens)
    llm.eval(llm.tokenize(b" there", add_bos=False))
    np.testing.assert_array_equal(np.array(llm.scores[llm.n_tokens - 1]), cont)


# the recommended small cache (tq4_0 keys, 2-bit values) and the long-context one (6-bit keys, tq4_0 values): K and V
# rows of different sizes
@pytest.mark.parametrize("k,v", [("tq4_0", "tqv2_0"), ("tq6_0", "tq4_0")])
def test_state_round_trip_with_mixed_tq_types(tmp_path, k, v):
    mix = tql.Llama(str(MODEL), cache_type_k=k, cache_type_v=v, n_ctx=512, n_threads=2, verbose=False)
    assert (mix.context_params.type_k, mix.context_params.type_v) == (type_info(k).ggml_type, type_info(v).ggml_type)
    tokens = mix.tokenize(b"Once upon a time, in a small village by the sea,")
    ref = _next_logits(mix, tokens)
    path = tmp_path / "state.bin"
    tql.save_state_file(mix, path)
    _next_logits(mix, mix.tokenize(b"Something else entirely, to overwrite the cache."))
    tql.load_state_file(mix, path)
    np.testing.assert_array_equal(np.array(mix.scores[mix.n_tokens - 1]), ref)


LONG_PROMPT = (b"The harbour was quiet before dawn. Fishermen checked their nets, gulls circled the masts, and the "
               b"baker on the corner lit his ovens while the lighthouse keeper climbed down for breakfast.")


def test_state_round_trip_with_fitted_key_means(llm, tmp_path):
    # a first ubatch of 32 tokens or more fits the key means; the state must carry them
    tokens = llm.tokenize(LONG_PROMPT)
    assert len(tokens) >= 32
    ref = _next_logits(llm, tokens)
    path = tmp_path / "state.bin"
    tql.save_state_file(llm, path)
    _next_logits(llm, llm.tokenize(b"Another long text replaces the cache and fits other means: " * 4))
    tql.load_state_file(llm, path)
    llm.eval(llm.tokenize(b" The", add_bos=False))
    cont = np.array(llm.scores[llm.n_tokens - 1], copy=True)
    _next_logits(llm, tokens)
    llm.eval(llm.tokenize(b" The", add_bos=False))
    np.testing.assert_array_equal(np.array(llm.scores[llm.n_tokens - 1]), cont)


def test_state_round_trip_with_fitted_key_weights(tmp_path, monkeypatch):
    # every KV head weighted (LLAMA_TQ_K_WEIGHT=2): the state must carry the weights with the means
    monkeypatch.setenv("LLAMA_TQ_K_WEIGHT", "2")
    lw = tql.Llama(str(MODEL), cache_type_k="tq4_0", cache_type_v="tq4_0", n_ctx=512, n_threads=2, verbose=False)
    tokens = lw.tokenize(LONG_PROMPT)
    _next_logits(lw, tokens)
    path = tmp_path / "state.bin"
    tql.save_state_file(lw, path)
    lw.eval(lw.tokenize(b" The", add_bos=False))
    cont = np.array(lw.scores[lw.n_tokens - 1], copy=True)
    _next_logits(lw, lw.tokenize(b"Another long text replaces the cache and fits other weights: " * 4))
    tql.load_state_file(lw, path)
    lw.eval(lw.tokenize(b" The", add_bos=False))
    np.testing.assert_array_equal(np.array(lw.scores[lw.n_tokens - 1]), cont)


def test_state_file_of_the_previous_version_is_refused(llm, tmp_path):
    path = tmp_path / "state.bin"
    _next_logits(llm, llm.tokenize(LONG_PROMPT))
    tql.save_state_file(llm, path)
    blob = bytearray(path.read_bytes())
    for old in (1, 2):  # keys without their means (1), with means but no weights (2)
        blob[8:12] = old.to_bytes(4, "little")
        path.write_bytes(bytes(blob))
        with pytest.raises(ValueError, match=f"version {old}, this ggml_tq reads 3"):
            tql.load_state_file(llm, path)


@pytest.mark.parametrize("old", ["no means", "no weights"])
def test_llama_cpp_session_file_of_an_older_build_is_refused(llm, tmp_path, capfd, old):
    # session files as older builds wrote them. This one writes, after each layer's keys, the tag "TQKW", the key
    # means and the key weights (n_embd_head_k * n_head_kv floats each); a build without key weighting wrote the
    # tag "TQKM" and the means only, one without key centering neither
    import llama_cpp
    path = tmp_path / "session.bin"
    tokens = llm.tokenize(LONG_PROMPT)
    _next_logits(llm, tokens)
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    assert llama_cpp.llama_state_save_file(llm._ctx.ctx, str(path).encode(), arr, len(tokens))
    blob = path.read_bytes()
    n = 4 * 64 * 3  # SmolLM2: head 64, 3 KV heads
    assert blob.count(b"TQKW") == 30
    parts = blob.split(b"TQKW")
    keep = (lambda p: p[2 * n:]) if old == "no means" else (lambda p: b"TQKM" + p[:n] + p[2 * n:])
    path.write_bytes(parts[0] + b"".join(keep(p) for p in parts[1:]))
    loud = tql.Llama(str(MODEL), cache_type_k="tq4_0", cache_type_v="tq4_0", n_ctx=512, n_threads=2, verbose=True)
    out = (llama_cpp.llama_token * 512)()
    got = llama_cpp.ctypes.c_size_t(0)
    ok = llama_cpp.llama_state_load_file(loud._ctx.ctx, str(path).encode(), out, 512, llama_cpp.ctypes.byref(got))
    assert not ok
    what = "centering" if old == "no means" else "weighting"
    assert f"it was saved by a build without TQ key {what}" in capfd.readouterr().err
    # the file as written loads
    path.write_bytes(blob)
    assert llama_cpp.llama_state_load_file(loud._ctx.ctx, str(path).encode(), out, 512, llama_cpp.ctypes.byref(got))


def test_key_weights_are_tied_over_rope_pairs(tmp_path, monkeypatch):
    # the two channels of a RoPE pair share one weight (llama_k_pair_sum): RoPE moves energy between them with the
    # position, and a weight per channel fitted on the first ubatch would describe only the angle it saw there.
    # SmolLM2 pairs channels 2i and 2i + 1 (NORM); every KV head weighted (LLAMA_TQ_K_WEIGHT=2). The weights are
    # read from a session file: per layer "TQKW", the means, then the weights (head 64 x 3 KV heads floats each)
    monkeypatch.setenv("LLAMA_TQ_K_WEIGHT", "2")
    llama_cpp = tql.load_llama_cpp()
    lw = tql.Llama(str(MODEL), cache_type_k="tq4_0", cache_type_v="tq4_0", n_ctx=512, n_threads=2, verbose=False)
    tokens = lw.tokenize(LONG_PROMPT)
    _next_logits(lw, tokens)
    path = tmp_path / "session.bin"
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    assert llama_cpp.llama_state_save_file(lw._ctx.ctx, str(path).encode(), arr, len(tokens))
    n = 64 * 3
    parts = path.read_bytes().split(b"TQKW")[1:]
    assert len(parts) == 30
    for p in parts:
        w = np.frombuffer(p[4 * n:8 * n], dtype=np.float32).reshape(3, 64)
        assert np.all((w >= 0.25) & (w <= 4)), w
        np.testing.assert_array_equal(w[:, 0::2], w[:, 1::2])
        assert np.ptp(w) > 0.1   # fitted, not left at one


@pytest.mark.parametrize("mode", ["1", "3"])
def test_qk_norm_layers_weight_every_key_head(tmp_path, monkeypatch, mode):
    # where a layer normalizes its queries and keys (QK-norm: a random Qwen3-architecture model), each channel's
    # scale is a learned gain and every KV head is weighted; LLAMA_TQ_K_WEIGHT=3 gates them by the predicted gain as
    # elsewhere, which with unit gains and random projections (about as much energy in every channel) weights none.
    # The weights are tied over NEOX RoPE pairs (i, i + head/2). Read from a session file as above
    monkeypatch.setenv("LLAMA_TQ_K_WEIGHT", mode)
    llama_cpp = tql.load_llama_cpp()
    path = tmp_path / "qwen3.gguf"
    run(sys.executable, ROOT / "tools" / "make_random_llama.py", path, "--layers", 2, "--embd", 512, "--ff", 256,
        "--heads", 4, "--kv-heads", 2, "--vocab", 1000, "--ctx", 4096, "--qk-norm",
        env={"PYTHONPATH": str(SRC / "gguf-py")}, check=True)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    assert model
    ctx = _raw_context(llama_cpp, model, GGML_TYPE_TQ4_0)
    try:
        tokens = [int(t) for t in np.random.default_rng(0).integers(3, 1000, 64)]
        _decode(llama_cpp, ctx, tokens)
        session = tmp_path / "session.bin"
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        assert llama_cpp.llama_state_save_file(ctx, str(session).encode(), arr, len(tokens))
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    n = 128 * 2
    parts = session.read_bytes().split(b"TQKW")[1:]
    assert len(parts) == 2
    for p in parts:
        w = np.frombuffer(p[4 * n:8 * n], dtype=np.float32).reshape(2, 128)
        np.testing.assert_array_equal(w[:, :64], w[:, 64:])
        if mode == "1":
            assert np.ptp(w) > 0.05, w
        else:
            np.testing.assert_array_equal(w, 1)


def _raw_context(llama_cpp, model, type_k, n_ctx=512, n_seq_max=1):
    """A llama_context straight from the C API (what llama_cpp.Llama does not expose: sequences, K-shift)."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, 512, 512, n_seq_max
    p.n_threads = p.n_threads_batch = 2
    p.flash_attn_type = 1
    p.type_k = p.type_v = type_k
    ctx = llama_cpp.llama_init_from_model(model, p)
    assert ctx
    return ctx


def _decode(llama_cpp, ctx, tokens, pos0=0, seq=0, all_logits=False):
    """Decode tokens at positions pos0.. in sequence seq, logits for the last one (all_logits: for each)."""
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos0 + i, 1
        batch.logits[i] = all_logits or i == len(tokens) - 1
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(ctx, batch) == 0
    llama_cpp.llama_batch_free(batch)


def test_sequence_state_with_other_key_means_is_refused(llm):
    # a sequence restored beside others must have been stored against the same key means
    llama_cpp = tql.load_llama_cpp()
    model = llm._model.model
    p1, p2 = llm.tokenize(LONG_PROMPT), llm.tokenize(b"A different text fits different key means, " * 6)

    a, b = (_raw_context(llama_cpp, model, GGML_TYPE_TQ4_0, n_ctx=1024, n_seq_max=2) for _ in range(2))
    try:
        _decode(llama_cpp, a, p1)
        size = llama_cpp.llama_state_seq_get_size(a, 0)
        state = (llama_cpp.ctypes.c_uint8 * size)()
        assert llama_cpp.llama_state_seq_get_data(a, state, size, 0) == size
        # beside a sequence stored against the same means: restored
        assert llama_cpp.llama_state_seq_set_data(a, state, size, 1) > 0
        # beside one stored against other means: refused, and the context keeps its sequence
        _decode(llama_cpp, b, p2)
        mem = llama_cpp.llama_get_memory(b)
        assert llama_cpp.llama_state_seq_set_data(b, state, size, 1) == 0
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(p2) - 1
        # into a context with no other sequence: restored, means and all
        llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)
        assert llama_cpp.llama_state_seq_set_data(b, state, size, 1) > 0
    finally:
        llama_cpp.llama_free(a)
        llama_cpp.llama_free(b)


@pytest.mark.parametrize("weight", ["1", "2"])
def test_context_shift_of_centered_tq_keys(llm, monkeypatch, weight):
    # seq_add moves cached keys to new positions (the K-shift graph: dequantize, divide by the key weights, add
    # the key means back, RoPE, subtract them, multiply, quantize). The next-token distributions of the tokens
    # decoded after the shift must stay as close to those of the same tokens evaluated at the new positions as
    # upstream's q4_0 cache keeps them: mean KL over 8 tokens and shifts of 10, 100 and 1000 positions (one token
    # at one shift swings by 3x between runs of the same codec); before patch 0010 a TQ cache crashed here.
    # LLAMA_TQ_K_WEIGHT=2: every KV head weighted (SmolLM2 has none by default), which the shift must undo around
    # RoPE and the means: a shift that skipped the division by the weights gave 30x q4_0's KL at 100 positions
    monkeypatch.setenv("LLAMA_TQ_K_WEIGHT", weight)
    llama_cpp = tql.load_llama_cpp()
    model = llm._model.model
    toks = llm.tokenize(LONG_PROMPT * 2)
    n, tail = len(toks), 8
    assert n - tail >= 32   # the first ubatch fits the means and weights
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def next_token_probs(type_k, shifted, d):
        ctx = _raw_context(llama_cpp, model, type_k)
        try:
            if shifted:
                _decode(llama_cpp, ctx, toks[:-tail], 0)
                llama_cpp.llama_memory_seq_add(llama_cpp.llama_get_memory(ctx), 0, -1, -1, d)
            else:
                _decode(llama_cpp, ctx, toks[:-tail], d)
            _decode(llama_cpp, ctx, toks[-tail:], n - tail + d, all_logits=True)
            logits = np.stack([np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                               for i in range(tail)]).astype(np.float64)
        finally:
            llama_cpp.llama_free(ctx)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def shift_kl(type_k):
        kl = []
        for d in (10, 100, 1000):
            a, b = next_token_probs(type_k, False, d), next_token_probs(type_k, True, d)
            kl.append(np.mean(np.sum(a * np.log(a / b), -1)))
        return float(np.mean(kl))

    GGML_TYPE_Q4_0 = 2
    kl_q4, kl_tq = shift_kl(GGML_TYPE_Q4_0), shift_kl(GGML_TYPE_TQ4_0)
    assert np.isfinite(kl_tq) and kl_tq <= kl_q4, (kl_tq, kl_q4)


def test_state_file_refused_by_context_of_other_cache_type(llm, tmp_path):
    path = tmp_path / "state.bin"
    _next_logits(llm, llm.tokenize(b"Hello world"))
    tql.save_state_file(llm, path)
    other = tql.Llama(str(MODEL), cache_type_k="q8_0", cache_type_v="q8_0", n_ctx=512, n_threads=2, verbose=False)
    with pytest.raises(ValueError, match="tq4_0/tq4_0.*q8_0/q8_0"):
        tql.load_state_file(other, path)
    assert other.n_tokens == 0  # refused before anything was touched


def test_corrupt_state_file_is_refused(llm, tmp_path):
    path = tmp_path / "state.bin"
    _next_logits(llm, llm.tokenize(b"Hello world"))
    tql.save_state_file(llm, path)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        tql.load_state_file(llm, path)
    path.write_bytes(b"not a state file")
    with pytest.raises(ValueError, match="not a ggml-tq state file"):
        tql.load_state_file(llm, path)


def test_llama_cpp_session_file_with_other_cache_type_is_refused(llm, tmp_path, capfd):
    # llama.cpp's own session files (llama-cli --prompt-cache): the patched check names both types
    import llama_cpp
    path = str(tmp_path / "session.bin").encode()
    tokens = llm.tokenize(b"Hello world")
    _next_logits(llm, tokens)
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    assert llama_cpp.llama_state_save_file(llm._ctx.ctx, path, arr, len(tokens))
    other = tql.Llama(str(MODEL), cache_type_k="q8_0", cache_type_v="q8_0", n_ctx=512, n_threads=2, verbose=True)
    out = (llama_cpp.llama_token * 512)()
    n = llama_cpp.ctypes.c_size_t(0)
    ok = llama_cpp.llama_state_load_file(other._ctx.ctx, path, out, 512, llama_cpp.ctypes.byref(n))
    assert not ok
    err = capfd.readouterr().err
    assert "mismatched key type (context q8_0, state tq4_0" in err


# ---- llama-server with 4 parallel slots -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(ready, proc, what, timeout):
    """Poll ready() until it holds; fail with the process's output if it exits or the time runs out."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _post(port, payload, timeout=120):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def test_server_answers_four_concurrent_requests_with_tq_cache():
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "llama-server"), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port),
                             "-ctk", "tq4_0", "-ctv", "tq4_0", "-fa", "on", "-np", "4", "-c", "2048", "-t", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        _wait_for(healthy, proc, "llama-server to become healthy", 120)
        prompts = ["The capital of France is", "One, two, three, four,", "The opposite of hot is", "Water freezes at"]
        payload = lambda p: {"prompt": p, "n_predict": 12, "temperature": 0, "cache_prompt": False}
        # alone first: greedy decoding of each prompt, one at a time
        alone = [_post(port, payload(p))["content"] for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: _post(port, payload(p)), prompts))
        assert [r["content"] for r in together] == alone
        assert all(r["content"].strip() for r in together)
        assert "Paris" in together[0]["content"]
    finally:
        _stop(proc)


# ---- llama.cpp's RPC backend: the cache and the attention live on an rpc-server -----------------------------

def test_rpc_server_holds_and_attends_over_a_tq_cache():
    port = _free_port()
    server = subprocess.Popen([str(BIN / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        _wait_for(listening, server, "ggml-rpc-server to listen", 60)
        p = cli("-p", "What is the capital of France? Answer in one sentence.", "-n", "24", "--rpc", f"127.0.0.1:{port}",
                "-ngl", "99", "-dev", "RPC0", "-ctk", "tq4_0", "-ctv", "tq4_0", "-lv", "4", check=True)
        log = p.stdout + p.stderr
        assert "Paris" in p.stdout
        kv_lines = [line for line in log.splitlines() if "KV buffer size" in line]
        assert kv_lines and all("RPC" in line for line in kv_lines), kv_lines
        assert "K (tq4_0)" in log
    finally:
        _stop(server)


def test_passkey_emulated_keys(tmp_path):
    """--emulate-k passes the keys through a kv_lab codec in an eval callback, before the f16 K cache stores them:
    the f16 codec reproduces the plain run to the last bit (the callback holds the tensor the cache write reads),
    a 4-bit codec changes the scores; caches with other than f16 keys are refused."""
    def passkey(out, *extra):
        run(sys.executable, ROOT / "tools" / "passkey.py", "--lengths", "1024", "--depths", "0.5", "--seed", "3",
            "--caches", "f16/tq4_0", "--out", tmp_path / out, *extra, check=True)
        return json.loads((tmp_path / f"{out}.json").read_text())["rows"]

    def scores(rows):
        return [(r["first_logprob"], r["digits_logprob"], r["answer_logprobs"]) for r in rows]

    plain = passkey("plain")
    same = passkey("f16", "--emulate-k", "f16")
    coded = passkey("tq4", "--emulate-k", "tq4_0 weighted")
    assert [r["cache"] for r in same] == ["f16/tq4_0 [emulate-k f16]"]
    assert scores(same) == scores(plain)
    assert scores(coded) != scores(plain)
    p = run(sys.executable, ROOT / "tools" / "passkey.py", "--lengths", "1024", "--caches", "tq4_0",
            "--emulate-k", "tq4_0", "--out", tmp_path / "x")
    assert p.returncode != 0 and "f16 keys" in p.stderr
