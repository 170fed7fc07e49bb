"""`llm-deeper serve`: the engine, the app, and the HTTP server around them.

uvicorn runs on a side thread; the main thread runs the native engine's loop (see native.py for
why) or, for the hf engine, waits, and it owns the signals. vllm hands the process over to
`vllm serve` with the equivalent options.

Before the model loads (seconds): every adapter is read and checked, and the port is tried, so a
mistake is one sentence at once. Shutdown (SIGTERM or Ctrl-C): the server stops accepting
connections, running requests go on for up to `shutdown_grace` seconds, then end with finish
reason "length" and a proper end of stream; the process exits 0. A second signal ends them at
once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import UserError


def parse_lora_modules(specs: list[str]) -> dict[str, str]:
    """vLLM's spelling: name=path (several, space separated)."""
    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--lora-modules takes name=path, got '{s}'.")
        from ..pretrained.weights import read_peft_adapter

        try:
            read_peft_adapter(path)
        except UserError as exc:
            raise UserError(f"--lora-modules {name}: {exc}") from None
        out[name] = path
    return out


def vllm_argv(model: str, host: str, port: int, api_key: str | None, lora: dict[str, str],
              served_name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The equivalent `vllm serve` command line (tool calling through the hermes parser, which
    reads the same <tool_call> format), then `extra`: vLLM's own options, e.g. the GPU knobs
    `--tensor-parallel-size 2 --max-model-len 8192` (docs/deployment.md)."""
    from ..hf.models import hf_dir

    argv = ["vllm", "serve", hf_dir(model), "--host", host, "--port", str(port),
            "--served-model-name", served_name, "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes"]
    if api_key:
        argv += ["--api-key", api_key]
    if lora:
        argv += ["--enable-lora", "--lora-modules", *[f"{k}={v}" for k, v in lora.items()]]
    return argv + list(extra)


ENGINES = ("native", "hf", "vllm")


class ServerThread:
    """uvicorn serving `app` on a daemon thread of this process, ready once it accepts
    connections; port 0 picks a free one. `close()` (or leaving a `with` block) stops it and
    waits for the thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "error",
                 timeout: float = 60, max_connections: int | None = 256,
                 keep_alive: float = 5.0, header_timeout: float = 10.0,
                 graceful_timeout: float | None = None):
        import uvicorn

        from .limits import TimedH11Protocol

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        protocol = type("Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level=log_level, http=protocol,
            limit_concurrency=max_connections, timeout_keep_alive=keep_alive,
            timeout_graceful_shutdown=graceful_timeout))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="http")
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                self.close()
                raise UserError(f"could not serve on {host}:{port} (is the port in use?).")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ServeOptions:
    """Everything `llm-deeper serve` takes (commands/serve.py spells each as an option)."""
    model: str = "smollm2-135m"
    engine: str = "native"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    lora_modules: tuple[str, ...] = ()
    served_name: str | None = None
    device: str = "cpu"
    max_num_seqs: int = 64  # native: requests decoded together
    max_num_batched_tokens: int = 2048  # native: new tokens per step (longer prompts: chunks)
    enable_prefix_caching: bool = True  # native: prompts share the blocks of a common beginning
    kv_cache_gb: float = 1.0
    block_size: int = 16
    quant: str | None = None  # native, CPU: "int8" weights and activations
    max_sequences_per_request: int = 16  # prompts x n
    max_body_mb: float = 4.0
    max_connections: int = 256  # open connections + requests; beyond it uvicorn answers 503
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    header_timeout: float = 10.0  # seconds a request's headers may take
    shutdown_grace: float = 30.0  # seconds running requests get after SIGTERM / Ctrl-C
    vllm_args: str = ""  # vllm: more options for `vllm serve`, one shell-quoted string


def make_engine(o: ServeOptions, lora: dict[str, str]):
    """The engine object the app serves (native or hf)."""
    if o.engine == "native":
        from .native import NativeEngine

        return NativeEngine(o.model, o.device, max_num_seqs=o.max_num_seqs,
                            block_size=o.block_size, kv_cache_bytes=int(o.kv_cache_gb * 2**30),
                            max_batched_tokens=o.max_num_batched_tokens, adapters=lora,
                            enable_prefix_caching=o.enable_prefix_caching, quant=o.quant,
                            start=False)  # serve() runs its loop on this thread
    if o.engine == "hf":
        from .hf_engine import HFEngine

        return HFEngine(o.model, lora, device=o.device)
    raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{o.engine}'.")


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); is another "
                            "server there? Pick another --port.") from None


def serve(o: ServeOptions) -> None:
    lora = parse_lora_modules(list(o.lora_modules))
    served = o.served_name or os.path.basename(os.path.normpath(o.model))
    if o.quant and o.engine != "native":
        raise UserError(f"--quant {o.quant} runs in the native engine, not --engine {o.engine}.")
    if o.vllm_args and o.engine != "vllm":
        raise UserError(f"--vllm-args are options of 'vllm serve'; they need --engine vllm, "
                        f"not --engine {o.engine}.")
    if o.engine == "vllm":
        if shutil.which("vllm") is None:
            raise UserError("--engine vllm needs vLLM (pip install vllm, Linux with a CUDA GPU); "
                            "--engine native and --engine hf run anywhere.")
        try:
            extra = tuple(shlex.split(o.vllm_args))
        except ValueError as exc:
            raise UserError(f"--vllm-args: {exc} (quote it as a shell would).") from None
        argv = vllm_argv(o.model, o.host, o.port, o.api_key, lora, served, extra)
        print(" ".join(argv), file=sys.stderr)
        os.execvp(argv[0], argv)
    try:
        import uvicorn  # noqa: F401 (only: is the serve extra installed?)
    except ImportError:
        raise UserError("serving needs the 'serve' extra: uv sync --extra serve.") from None
    from .app import create_app

    check_port(o.host, o.port)
    eng = make_engine(o, lora)
    app = create_app(eng, served, api_key=o.api_key,
                     max_body_bytes=int(o.max_body_mb * 2**20),
                     max_sequences=o.max_sequences_per_request)
    http = ServerThread(app, o.host, o.port, log_level="warning",
                        max_connections=o.max_connections, keep_alive=o.keep_alive,
                        header_timeout=o.header_timeout, graceful_timeout=o.shutdown_grace + 10)
    print(f"serving {served} on http://{o.host}:{o.port}/v1 (engine {o.engine})",
          file=sys.stderr)
    stopping = threading.Event()

    def on_signal(signum, frame):
        if stopping.is_set():  # a second signal: end the running requests now
            eng.finish_all()
            return
        stopping.set()
        print(f"shutting down: no new connections; running requests get {o.shutdown_grace:g} s",
              file=sys.stderr)
        http.server.should_exit = True
        timer = threading.Timer(o.shutdown_grace, eng.finish_all)
        timer.daemon = True
        timer.start()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if o.engine == "native":  # the model runs on this (main) thread: see native.py
            threading.Thread(target=lambda: (http.thread.join(), eng.stop()), daemon=True).start()
            eng.run_forever()  # returns when the HTTP server has stopped
        while http.thread.is_alive():
            http.thread.join(0.5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
