"""The server against hostile and careless clients, in process on loopback (a small random model
behind SmolLM2's tokenizer and chat template): one request's failure ends that request alone,
bodies are bounded whatever their framing, text must be text, one request cannot ask for
hundreds of sequences, every path but /health needs the key, idle connections are closed, and a
schema that cannot be enforced is refused. The last test throws all of it at once."""

import http.client
import json
import socket
import threading
import time

import pytest

from conftest import smollm2_or_skip

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
# compiles, and its first token (") is forced; at the second llguidance gives up ("too many
# expressions constructed"), whatever the model
FAILING_SCHEMA = {"type": "string", "pattern": "^a{1000000}$"}
CYCLIC_SCHEMA = {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}},
                 "$ref": "#/$defs/A"}


@pytest.fixture(scope="module")
def server():
    smollm2_or_skip()
    from llm_deeper.config import preset
    from llm_deeper.pretrained import models
    from llm_deeper.serve.app import create_app
    from llm_deeper.serve.launch import ServerThread
    from llm_deeper.serve.native import NativeEngine, ServingTokenizer
    from llm_deeper.tokenizers import from_gguf
    from llm_deeper.tokenizers.pretrained import gguf_metadata
    from llm_deeper.torch_engine.model import TorchGPT

    meta = gguf_metadata(models.require("smollm2-135m"))
    tok = ServingTokenizer(from_gguf(None, meta), meta["tokenizer.chat_template"],
                           meta["tokenizer.ggml.eos_token_id"])
    cfg = preset("small", vocab_size=len(tok), context_length=256, d_model=32, d_ff=64,
                 n_layer=1)
    with NativeEngine("tiny", torch_model=TorchGPT(cfg, seed=0), tokenizer=tok) as engine:
        app = create_app(engine, "tiny", api_key=KEY, max_body_bytes=1 << 20, max_sequences=16,
                         body_timeout=2.0)
        with ServerThread(app, header_timeout=1.0, keep_alive=1.0) as http_server:
            yield http_server


def post(server, path, body, headers=AUTH, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", path, raw if raw is not None else json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def chat(content="Count to twenty.", **kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": content}],
            "temperature": 0, **kw}


def stream_events(server, body):
    """(data events as dicts, saw [DONE]) of a streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), AUTH)
    r = conn.getresponse()
    assert r.status == 200
    events, done = [], False
    for line in r:
        if line.startswith(b"data: "):
            if line.strip() == b"data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[6:]))
    conn.close()
    return events, done


def health(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/health")
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def wait_idle(server, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = health(server)
        if h["running"] == 0 and h["kv_blocks_used"] == 0:
            return h
        time.sleep(0.05)
    return health(server)


def good_stream(server, out, i, n=40):
    events, done = stream_events(server, chat(max_tokens=n, ignore_eos=True))
    finish = [c["finish_reason"] for e in events for c in e.get("choices", [])
              if c.get("finish_reason")]
    out[i] = (done, finish, sum(1 for e in events for c in e.get("choices", [])
                                if c["delta"].get("content")))


def test_a_failing_grammar_ends_its_request_alone(server):
    """The schema's pattern breaks llguidance at the 2nd token: that request gets a 400 (or, if
    it already streams, an error event and [DONE]); a stream running beside it is untouched."""
    results = {}
    beside = threading.Thread(target=good_stream, args=(server, results, 0))
    beside.start()
    time.sleep(0.2)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": FAILING_SCHEMA}}
    status, body = post(server, "/v1/chat/completions", chat(response_format=fmt,
                                                             max_tokens=30))
    assert status == 400, body
    assert "generation stopped" in json.loads(body)["error"]["message"]
    events, done = stream_events(server, chat(response_format=fmt, max_tokens=30))
    assert done and "error" in events[-1]
    beside.join(120)
    assert results[0] == (True, ["length"], 40)
    assert wait_idle(server)["kv_blocks_used"] == 0


def test_a_chunked_body_is_bounded_by_what_is_read(server):
    """No Content-Length (chunked framing): the limit still holds, on the bytes themselves."""
    def chunks():
        piece = b"x" * 65536
        for _ in range(40):  # 2.5 MB, over the 1 MiB limit of this server
            yield piece

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", chunks(), AUTH, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["message"].startswith("request body")
    conn.close()


def test_a_trickling_body_times_out(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    reply = s.recv(4096)  # the body never completes: 408 after the 2 s body deadline
    s.close()
    assert b" 408 " in reply.split(b"\r\n")[0]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", '
                             '"content": "a\\ud800b"}], "max_tokens": 2}'),
    ("/v1/completions", '{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}'),
    ("/v1/completions", '{"model": "t\\udfffiny", "prompt": "ab", "max_tokens": 2}'),
])
def test_a_lone_surrogate_is_a_400(server, path, body):
    status, data = post(server, path, None, raw=body)
    assert status in (400, 404), data
    assert "error" in json.loads(data)


def test_one_request_cannot_ask_for_hundreds_of_sequences(server):
    t0 = time.perf_counter()
    status, body = post(server, "/v1/completions", {"model": "tiny", "prompt": ["hi"] * 100,
                                                     "n": 8, "max_tokens": 4})
    assert status == 400 and "800 sequences" in json.loads(body)["error"]["message"]
    assert time.perf_counter() - t0 < 10  # refused before any generation
    status, _ = post(server, "/v1/completions", {"model": "tiny", "prompt": ["hi"] * 4,
                                                 "n": 4, "max_tokens": 2})
    assert status == 200  # 16: at the limit


def test_every_path_but_health_needs_the_key(server):
    for path in ("/openapi.json", "/v1/models", "/docs"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 401, path
        assert json.loads(r.read())["error"]["code"] == "invalid_api_key"
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/openapi.json", headers={"Authorization": "Bearer wrong-key!"})
    assert conn.getresponse().status == 401
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/openapi.json", headers=AUTH)
    assert conn.getresponse().status == 200
    conn.close()
    assert health(server)["status"] == "ok"


def test_idle_and_slow_header_connections_are_closed(server):
    """Open and say nothing, or send headers a few bytes at a time: closed after the header
    deadline (1 s here), not kept for ever."""
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    t0 = time.time()
    slow.sendall(b"GET /health HTTP/1.1\r\n")
    for _ in range(6):
        time.sleep(0.3)
        try:
            slow.sendall(b"X-A: b\r\n")
        except OSError:
            break
    assert idle.recv(1024) == b""  # closed by the server
    assert time.time() - t0 < 5
    slow.settimeout(5)
    try:
        assert slow.recv(1024) == b""
    except ConnectionResetError:
        pass
    idle.close()
    slow.close()


def test_a_schema_that_cannot_be_enforced_is_a_400(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": CYCLIC_SCHEMA}}
    status, body = post(server, "/v1/chat/completions", chat(response_format=fmt, max_tokens=5))
    assert status == 400 and "cannot be enforced" in json.loads(body)["error"]["message"]


def test_load_and_faults_at_once(server):
    """Good streams, a failing grammar, a client that disconnects mid-stream and an oversized
    chunked body, all at once: every good stream completes, the server ends idle with every KV
    block back, and a fixed greedy answer is the same as before the storm."""
    probe = chat("Name three colours.", max_tokens=12)
    status, before = post(server, "/v1/chat/completions", probe)
    assert status == 200
    results, threads = {}, []
    for i in range(6):
        threads.append(threading.Thread(target=good_stream, args=(server, results, i, 30)))

    def failing():
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": FAILING_SCHEMA}}
        results["grammar"] = post(server, "/v1/chat/completions",
                                  chat(response_format=fmt, max_tokens=30))[0]

    def disconnecting():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/chat/completions",
                     json.dumps(chat(max_tokens=200, ignore_eos=True, stream=True)), AUTH)
        r = conn.getresponse()
        r.readline()
        conn.sock.close()  # gone mid-stream
        results["gone"] = True

    def oversized():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", (b"y" * 65536 for _ in range(32)), AUTH,
                     encode_chunked=True)
        results["big"] = conn.getresponse().status
        conn.close()

    threads += [threading.Thread(target=f) for f in (failing, disconnecting, oversized)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(results[i] == (True, ["length"], 30) for i in range(6)), results
    assert results["grammar"] == 400 and results["big"] == 413 and results["gone"]
    h = wait_idle(server)
    assert h["running"] == 0 and h["kv_blocks_used"] == 0
    status, after = post(server, "/v1/chat/completions", probe)
    strip = lambda b: json.loads(b)["choices"][0]["message"]["content"]
    assert status == 200 and strip(after) == strip(before)
