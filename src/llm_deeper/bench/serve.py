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

`--shared-prefix N` gives every request the same system prompt of about N tokens (a long
fixed text) before its own question: the workload of prefix caching (serve/block_manager.py).
In process, each run is then done twice, prefix caching on and off (the cache emptied before
each run, so the first requests of a run find nothing), and the summary sets their TTFT side by
side with the hit rate: prompt tokens found in the cache / prompt tokens.

`--url URL --model NAME` sends the same workload to any OpenAI-compatible server instead (ours
in another process, llama-server, vLLM, mlx_lm.server): the way to compare engines on one
machine. Its batching is the server's own, so only the concurrencies run. A server that sends
no usage chunk gets its tokens counted as content chunks (one token each for llama-server and
vLLM when streaming), and the summary says so.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import UserError
from .common import json_line

TOPICS = ["a lighthouse keeper", "the first snow of winter", "a lost umbrella", "two rival bakers",
          "a clock that runs backwards", "the last train home", "a garden on the moon",
          "a cat who reads maps", "an old violin", "a river that forgets"]


RULES = ["Answer in plain English, in short paragraphs, and never in lists.",
         "Every story has a beginning, a middle and an end, in that order.",
         "Name at least one character, and say where the story takes place.",
         "Keep a gentle tone; nobody is hurt, and nothing is frightening.",
         "Describe one sound, one smell and one colour somewhere in the story.",
         "If the topic is strange, take it seriously and make it believable.",
         "End with a sentence that could be read aloud at bedtime.",
         "Do not explain the story after telling it, and do not give it a title."]


def shared_system_prompt(n_tokens: int) -> str:
    """A fixed text of about n_tokens tokens (~4 characters a token, as for English with a BPE
    vocabulary of SmolLM2's size): the house rules of a storyteller, numbered, repeated."""
    parts, k = ["You are a storyteller. Follow these house rules."], 0
    while sum(len(p) + 1 for p in parts) < 4 * n_tokens:
        parts.append(f"Rule {k + 1}: {RULES[k % len(RULES)]}")
        k += 1
    return " ".join(parts)


def prompt(i: int, system: str | None = None) -> list[dict]:
    user = [{"role": "user", "content": f"Tell me a story about {TOPICS[i % len(TOPICS)]}."}]
    return ([{"role": "system", "content": system}] if system else []) + user


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass(frozen=True)
class Target:
    """Where the requests go: host, port, https or not, the path before /v1, a bearer key."""
    host: str
    port: int
    https: bool = False
    prefix: str = ""
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None) -> Target:
        """http(s)://host[:port][/prefix][/v1]: the server's base URL, as an OpenAI client
        takes it (with or without the /v1)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--url must be an http:// or https:// address such as "
                            f"http://127.0.0.1:8080, got '{url}'.")
        prefix = parts.path.rstrip("/")
        prefix = prefix[:-3] if prefix.endswith("/v1") else prefix
        return cls(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                   parts.scheme == "https", prefix, api_key)

    def connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=600)


def one_request(target: Target, i: int, max_tokens: int, model: str,
                system: str | None = None) -> dict:
    """Stream one chat completion; return its timings."""
    body = json.dumps({"model": model, "messages": prompt(i, system), "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    conn = target.connect()
    t0 = time.perf_counter()
    conn.request("POST", f"{target.prefix}/v1/chat/completions", body, headers)
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
        for c in chunk.get("choices") or []:
            if (c.get("delta") or {}).get("content"):
                times.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    if not times:
        raise RuntimeError("a request streamed no content")
    counted = not tokens  # no usage chunk: count content chunks as tokens
    tokens = tokens or len(times)
    return {"ttft": times[0] - t0, "itl": [b - a for a, b in zip(times, times[1:])],
            "tpot": (end - times[0]) / max(tokens - 1, 1), "tokens": tokens, "e2e": end - t0,
            "counted": counted}


def load_run(target: Target, concurrency: int, n_requests: int, max_tokens: int,
             model: str, system: str | None = None) -> dict:
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
                r = one_request(target, i, max_tokens, model, system)
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
            "req_per_s": round(n_requests / wall, 3), "output_tokens": out_tokens,
            "output_tok_per_s": round(out_tokens / wall, 1),
            "ttft_p50_ms": ms(ttft, 50), "ttft_p99_ms": ms(ttft, 99),
            "tpot_p50_ms": ms(tpot, 50), "tpot_p99_ms": ms(tpot, 99),
            "itl_p50_ms": ms(itl, 50), "itl_p99_ms": ms(itl, 99),
            "tokens_from": "content chunks" if any(r["counted"] for r in results) else "usage"}


HEADER = (f"{'batching':>8} {'conc':>4} {'req':>4} {'req/s':>7} {'out tok/s':>9} "
          f"{'TTFT p50/p99 ms':>16} {'TPOT p50/p99 ms':>16} {'ITL p50/p99 ms':>15}")


def row(mode: str, r: dict) -> str:
    return (f"{mode:>8} {r['concurrency']:>4} {r['requests']:>4} {r['req_per_s']:>7.2f} "
            f"{r['output_tok_per_s']:>9.1f} {r['ttft_p50_ms']:>7.0f} / {r['ttft_p99_ms']:<6.0f} "
            f"{r['tpot_p50_ms']:>7.0f} / {r['tpot_p99_ms']:<6.0f} "
            f"{r['itl_p50_ms']:>6.0f} / {r['itl_p99_ms']:<6.0f}")


def run_url(url: str, model: str, concurrency=(1, 4, 16, 64), max_tokens: int = 64,
            requests: int | None = None, api_key: str | None = None, log=print,
            shared_prefix: int = 0) -> dict:
    """The same workload against the OpenAI-compatible server at `url`, serving `model`."""
    target = Target.from_url(url, api_key)
    system = shared_system_prompt(shared_prefix) if shared_prefix else None
    try:
        one_request(target, 0, 4, model)  # warm-up, and a clear sentence if nothing is there
    except OSError as exc:
        raise UserError(f"cannot reach {url} ({exc.strerror or exc}); is the server running?"
                        ) from None
    except RuntimeError as exc:
        raise UserError(f"{url} did not stream a chat completion for model '{model}': {exc}."
                        ) from None
    log(f"bench serve: {model} at {url}, {max_tokens} tokens per request (ignore_eos), "
        "streaming chat; batching is the server's")
    log(HEADER)
    runs = []
    for c in concurrency:
        r = {"batching": "server", **load_run(target, c, requests or max(c, 4), max_tokens,
                                              model, system)}
        runs.append(r)
        log(row("server", r))
    summary = {"bench": "serve", "url": url, "model": model, "max_tokens": max_tokens,
               "runs": runs}
    if shared_prefix:
        summary["shared_prefix"] = shared_prefix
    tps = {r["concurrency"]: r["output_tok_per_s"] for r in runs}
    for c in concurrency[1:]:
        if concurrency[0] == 1:
            summary[f"c{c}_over_c1"] = round(tps[c] / tps[1], 2)
    log(json_line(summary))
    return summary


def run(model: str = "smollm2-135m", concurrency=(1, 4, 16, 64), max_tokens: int = 64,
        requests: int | None = None, batching=("on", "off"), device: str = "cpu",
        engine=None, log=print, shared_prefix: int = 0) -> dict:
    """`requests`: per run (default: max(concurrency, 4), so every client is busy).
    `shared_prefix`: a common system prompt of about that many tokens, each run done with
    prefix caching on and off."""
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
    target = Target("127.0.0.1", http.port)
    log(f"bench serve: {model}, native engine on {device}, {max_tokens} tokens per request "
        f"(ignore_eos), streaming chat on 127.0.0.1:{http.port}")
    system = shared_system_prompt(shared_prefix) if shared_prefix else None
    caching = (True, False) if system else (None,)  # None: as the engine is
    if system:
        n = len(engine.tokenizer(system)["input_ids"])
        log(f"shared prefix: a system prompt of {n} tokens; +pc / -pc: prefix caching on / off, "
            "emptied before each run")
    log(HEADER)
    runs: list[dict] = []
    failure: list[BaseException] = []

    def drive():
        try:
            one_request(target, 0, 4, model, system)  # warm-up: first-call costs out
            for mode in batching:
                engine.scheduler.max_num_seqs = max(concurrency) if mode == "on" else 1
                for c in concurrency:
                    for pc in caching:
                        r = {"batching": mode, **_one_run(engine, target, c, requests,
                                                          max_tokens, model, system, pc)}
                        runs.append(r)
                        log(row(mode + {None: "", True: " +pc", False: " -pc"}[pc], r))
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
    tps = {(r["batching"], r["concurrency"]): r["output_tok_per_s"] for r in runs
           if r.get("prefix_caching") is not False}
    top = max(concurrency)
    if ("on", 1) in tps:
        for c in concurrency[1:]:
            summary[f"on_c{c}_over_c1"] = round(tps[("on", c)] / tps[("on", 1)], 2)
    if ("on", top) in tps and ("off", top) in tps:
        summary[f"on_over_off_c{top}"] = round(tps[("on", top)] / tps[("off", top)], 2)
    for k, v in summary.items():
        if k.startswith("on_"):
            log(f"{k}: {v}x")
    if system:
        summary["shared_prefix"] = shared_prefix
        summary["prefix_caching"] = compare_caching(runs, log)
    log(json_line(summary))
    return summary


def _one_run(engine, target, c, requests, max_tokens, model, system, pc) -> dict:
    """One load run; with pc True/False, prefix caching set (and emptied) first, and the
    prompt tokens and cache hits of the run counted."""
    if pc is None:
        return load_run(target, c, requests or max(c, 4), max_tokens, model, system)
    engine.set_prefix_caching(pc)
    tokens, hits = engine.prompt_tokens, engine.prefix_cache_hit_tokens
    r = load_run(target, c, requests or max(c, 4), max_tokens, model, system)
    return {**r, "prefix_caching": pc, "prompt_tokens": engine.prompt_tokens - tokens,
            "prefix_hit_tokens": engine.prefix_cache_hit_tokens - hits}


def compare_caching(runs: list[dict], log=print) -> list[dict]:
    """TTFT with prefix caching on against off, per batching mode and concurrency."""
    out = []
    on = [r for r in runs if r.get("prefix_caching")]
    for r in on:
        off = next(x for x in runs if x.get("prefix_caching") is False
                   and (x["batching"], x["concurrency"]) == (r["batching"], r["concurrency"]))
        hit = round(r["prefix_hit_tokens"] / max(r["prompt_tokens"], 1), 3)
        out.append({"batching": r["batching"], "concurrency": r["concurrency"],
                    "ttft_p50_ms_on": r["ttft_p50_ms"], "ttft_p50_ms_off": off["ttft_p50_ms"],
                    "ttft_p99_ms_on": r["ttft_p99_ms"], "ttft_p99_ms_off": off["ttft_p99_ms"],
                    "hit_rate": hit})
        log(f"prefix caching, batching {r['batching']}, c{r['concurrency']}: TTFT p50 "
            f"{off['ttft_p50_ms']:.0f} -> {r['ttft_p50_ms']:.0f} ms, p99 {off['ttft_p99_ms']:.0f}"
            f" -> {r['ttft_p99_ms']:.0f} ms (off -> on); {100 * hit:.0f} % of prompt tokens "
            "found in the cache")
    return out

