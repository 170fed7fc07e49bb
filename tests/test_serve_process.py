"""`llm-deeper serve` as a process: mistakes are one sentence before the model loads, SIGTERM
lets running streams end properly and exits 0, and the idle server's memory is what the docs say."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import smollm2_or_skip


def serve(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "llm_deeper", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, **kw)


def test_port_in_use_and_broken_adapters_are_refused_before_the_model_loads(tmp_path):
    """With an empty model cache, loading the model would fail with 'not cached': getting the
    port's or the adapter's sentence instead shows they were checked first."""
    empty = {"LLM_DEEPER_CACHE": str(tmp_path / "empty-cache")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = serve("--port", str(taken.getsockname()[1]), env=empty)
        out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and out.strip().startswith("error: cannot listen on"), out
    broken = tmp_path / "adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    p = serve("--port", "0", "--lora-modules", f"bad={broken}", env=empty)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "lora_alpha" in out and len(out.strip().splitlines()) == 1, out
    (broken / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    p = serve("--port", "0", "--lora-modules", f"bad={broken}", env=empty)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "corrupt" in out, out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(port, max_tokens, out, key):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell a story."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    rec = out[key] = {"tokens": 0, "finish": None, "done": False, "started": threading.Event()}
    for line in r:
        if line.strip() == b"data: [DONE]":
            rec["done"] = True
        elif line.startswith(b"data: "):
            for c in json.loads(line[6:]).get("choices", []):
                if c["delta"].get("content"):
                    rec["tokens"] += 1
                    rec["started"].set()
                rec["finish"] = c.get("finish_reason") or rec["finish"]
    conn.close()


def test_sigterm_lets_running_streams_end_properly_and_exits_0():
    """A short stream finishes within the grace period; a long one is ended when it runs out
    (finish "length", then [DONE]); no new connection is accepted meanwhile; exit code 0."""
    smollm2_or_skip()
    port = _free_port()
    p = serve("--port", str(port), "--shutdown-grace", "4")
    try:
        deadline = time.time() + 240
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert p.poll() is None and time.time() < deadline, p.stdout.read()
                time.sleep(0.5)
        out = {}
        long = threading.Thread(target=_stream, args=(port, 4000, out, "long"))
        long.start()
        while "long" not in out or not out["long"]["started"].wait(0.1):
            time.sleep(0.1)
        short = threading.Thread(target=_stream, args=(port, 12, out, "short"))
        short.start()
        while "short" not in out:
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(OSError):  # not accepting any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        short.join(60)
        long.join(60)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    log = p.stdout.read()
    assert rc == 0, log
    assert out["short"]["done"] and out["short"]["finish"] == "length"
    assert out["short"]["tokens"] == 12
    assert out["long"]["done"] and out["long"]["finish"] == "length"
    assert 0 < out["long"]["tokens"] < 4000  # ended by the grace period, not by max_tokens
    assert "Traceback" not in log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_idle_native_engine_holds_the_model_once():
    """Resident memory after loading SmolLM2-135M (538 MB of fp32 weights) with the default
    1 GB KV-cache budget: the fused decode weights are views of the parameters (not a second
    copy), and the cache takes memory as it fills (not at once). Was 2.6 GB."""
    smollm2_or_skip()
    code = ("from llm_deeper.serve.native import NativeEngine\n"
            "e = NativeEngine('smollm2-135m', start=False)\n"
            "print([l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmRSS')][0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rss_mb = int(r.stdout.split()[-1]) / 1024
    assert rss_mb < 1500, rss_mb


def test_vllm_args_reach_vllm_serve_and_need_the_vllm_engine(capsys):
    """The GPU knobs (docs/deployment.md) pass through to `vllm serve`, after our own options;
    with another engine they are refused in one sentence before anything loads."""
    from llm_deeper.cli import main
    from llm_deeper.serve.launch import vllm_argv

    argv = vllm_argv("smollm2-135m", "127.0.0.1", 8000, None, {}, "smol",
                     ("--tensor-parallel-size", "2", "--max-model-len", "8192"))
    assert argv[:2] == ["vllm", "serve"] and argv[-4:] == ["--tensor-parallel-size", "2",
                                                            "--max-model-len", "8192"]
    assert main(["serve", "--engine", "native", "--vllm-args", "--tensor-parallel-size 2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --vllm-args") and len(err.splitlines()) == 1, err


def test_bench_serve_measures_a_server_at_a_url(capsys):
    """`bench serve --url`: the workload any OpenAI-compatible server can take, here ours in
    another process, with its key; every request streams exactly max_tokens (ignore_eos) and the
    usage chunk counts them. A URL that is not one, or where nothing listens, is one sentence."""
    from llm_deeper.bench.serve import run_url
    from llm_deeper.cli import main
    from llm_deeper.serve.process import ServerProcess

    from conftest import smollm2_or_skip

    smollm2_or_skip()
    with ServerProcess("--api-key", "k3y", "--max-num-seqs", "4") as base_url:
        r = run_url(base_url + "/v1", "smollm2-135m", (1, 2), max_tokens=6, requests=2,
                    api_key="k3y", log=lambda *a: None)
    assert [x["concurrency"] for x in r["runs"]] == [1, 2]
    for x in r["runs"]:
        assert x["tokens_from"] == "usage" and x["output_tok_per_s"] > 0
        assert x["ttft_p50_ms"] > 0 and x["requests"] == 2 and x["output_tokens"] == 2 * 6
    for url, words in (("ftp://host", "must be an http"), ("http://127.0.0.1:9", "cannot reach")):
        assert main(["bench", "serve", "--url", url, "--concurrency", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
