"""`llm-deeper bench serve`: the server under load, the way serving benchmarks measure it.

One server process-internal (uvicorn in a thread, the real HTTP stack on loopback) with the
native engine; clients are threads that each keep one streaming chat request in flight. For
each concurrency C, C clients share `requests` requests, and every request asks for exactly
`max_tokens` tokens (`ignore_eos`, as vLLM's benchmark does, so every run does the same work).

Per request the client records, from the server-sent events it reads:
* TTFT, time to first token: request sent -> first content chunk (queueing + prefill);
* ITL, inter-token latency: the gaps between content chunks;
* TPOT, time per output token: (end - first token) / (tokens - 1).
Per run: requests/s and output tokens/s (tokens from the usage chunk / wall time).

Batching on (up to `max_num_seqs` requests decoded together) and off (`max_num_seqs` = 1: one
request at a time, the others wait) run in the same process with the same engine, so their
ratio is free of machine-to-machine noise.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

from ..errors import UserError
from .common import json_line

TOPICS = ["a lighthouse keeper", "the first snow of winter", "a lost umbrella", "two rival bakers",
          "a clock that runs backwards", "the last train home", "a garden on the moon",
          "a cat who reads maps", "an old violin", "a river that forgets"]


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Tell me a story about {TOPICS[i % len(TOPICS)]}."}]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(port: int, i: int, max_tokens: int, model: str) -> dict:
    """Stream one chat completion; return its timings."""
    body = json.dumps({"model": model, "messages": prompt(i), "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    times, tokens = [], 0
    for line in resp:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk["choices"]:
            if c["delta"].get("content"):
                times.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    if not times:
        raise RuntimeError("a request streamed no content")
    return {"ttft": times[0] - t0, "itl": [b - a for a, b in zip(times, times[1:])],
            "tpot": (end - times[0]) / max(tokens - 1, 1), "tokens": tokens, "e2e": end - t0}


def load_run(port: int, concurrency: int, n_requests: int, max_tokens: int, model: str) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    next_i = iter(range(n_requests))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            try:
                r = one_request(port, i, max_tokens, model)
            except Exception as exc:  # reported, not hidden
                errors.append(repr(exc))
                continue
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise UserError(f"{len(errors)} of {n_requests} requests failed, e.g. {errors[0]}")
    ms = lambda xs, q: round(1e3 * percentile(xs, q), 1)
    ttft = [r["ttft"] for r in results]
    itl = [x for r in results for x in r["itl"]]
    tpot = [r["tpot"] for r in results]
    out_tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": n_requests, "seconds": round(wall, 2),
            "req_per_s": round(n_requests / wall, 3),
            "output_tok_per_s": round(out_tokens / wall, 1),
            "ttft_p50_ms": ms(ttft, 50), "ttft_p99_ms": ms(ttft, 99),
            "tpot_p50_ms": ms(tpot, 50), "tpot_p99_ms": ms(tpot, 99),
            "itl_p50_ms": ms(itl, 50), "itl_p99_ms": ms(itl, 99)}


def run(model: str = "smollm2-135m", concurrency=(1, 4, 16, 64), max_tokens: int = 64,
        requests: int | None = None, batching=("on", "off"), device: str = "cpu",
        engine=None, log=print) -> dict:
    """`requests`: per run (default: max(concurrency, 4), so every client is busy)."""
    try:
        from ..serve.app import create_app
    except ImportError:
        raise UserError("bench serve needs the 'serve' extra: uv sync --extra serve.") from None
    from ..serve.launch import ServerThread
    from ..serve.native import NativeEngine

    own = engine is None
    if own:  # the model runs on this thread (see serve/native.py), the load on another
        engine = NativeEngine(model, device, max_num_seqs=max(concurrency), start=False)
    http = ServerThread(create_app(engine, model))
    port = http.port
    log(f"bench serve: {model}, native engine on {device}, {max_tokens} tokens per request "
        f"(ignore_eos), streaming chat on 127.0.0.1:{port}")
    log(f"{'batching':>8} {'conc':>4} {'req':>4} {'req/s':>7} {'out tok/s':>9} "
        f"{'TTFT p50/p99 ms':>16} {'TPOT p50/p99 ms':>16} {'ITL p50/p99 ms':>15}")
    runs: list[dict] = []
    failure: list[BaseException] = []

    def drive():
        try:
            one_request(port, 0, 4, model)  # warm-up: first-call costs out of the figures
            for mode in batching:
                engine.scheduler.max_num_seqs = max(concurrency) if mode == "on" else 1
                for c in concurrency:
                    r = {"batching": mode, **load_run(port, c, requests or max(c, 4),
                                                      max_tokens, model)}
                    runs.append(r)
                    log(f"{mode:>8} {c:>4} {r['requests']:>4} {r['req_per_s']:>7.2f} "
                        f"{r['output_tok_per_s']:>9.1f} "
                        f"{r['ttft_p50_ms']:>7.0f} / {r['ttft_p99_ms']:<6.0f} "
                        f"{r['tpot_p50_ms']:>7.0f} / {r['tpot_p99_ms']:<6.0f} "
                        f"{r['itl_p50_ms']:>6.0f} / {r['itl_p99_ms']:<6.0f}")
        except BaseException as exc:  # re-raised on the calling thread
            failure.append(exc)
        finally:
            http.close()
            if own:
                engine.stop()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    if own:
        engine.run_forever()
    driver.join()
    if failure:
        raise failure[0]
    summary = {"bench": "serve", "model": model, "engine": "native", "device": device,
               "max_tokens": max_tokens, "runs": runs}
    tps = {(r["batching"], r["concurrency"]): r["output_tok_per_s"] for r in runs}
    top = max(concurrency)
    if ("on", 1) in tps:
        for c in concurrency[1:]:
            summary[f"on_c{c}_over_c1"] = round(tps[("on", c)] / tps[("on", 1)], 2)
    if ("on", top) in tps and ("off", top) in tps:
        summary[f"on_over_off_c{top}"] = round(tps[("on", top)] / tps[("off", top)], 2)
    for k, v in summary.items():
        if k.startswith("on_"):
            log(f"{k}: {v}x")
    log(json_line(summary))
    return summary

