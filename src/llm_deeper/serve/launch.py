"""`llm-deeper serve`: the engine, the app, and the HTTP server around them.

The native engine runs its loop on the main thread and uvicorn on a side thread (see native.py
for why); the hf engine lets uvicorn run the main thread; vllm hands the process over to
`vllm serve` with the equivalent options.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time

from ..errors import UserError


def parse_lora_modules(specs: list[str]) -> dict[str, str]:
    """vLLM's spelling: name=path (several, space separated)."""
    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--lora-modules takes name=path, got '{s}'.")
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise UserError(f"--lora-modules {name}: {path} is not a PEFT adapter directory.")
        out[name] = path
    return out


def vllm_argv(model: str, host: str, port: int, api_key: str | None, lora: dict[str, str],
              served_name: str) -> list[str]:
    """The equivalent `vllm serve` command line (tool calling through the hermes parser, which
    reads the same <tool_call> format)."""
    from ..hf.models import hf_dir

    argv = ["vllm", "serve", hf_dir(model), "--host", host, "--port", str(port),
            "--served-model-name", served_name, "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes"]
    if api_key:
        argv += ["--api-key", api_key]
    if lora:
        argv += ["--enable-lora", "--lora-modules", *[f"{k}={v}" for k, v in lora.items()]]
    return argv


ENGINES = ("native", "hf", "vllm")


class ServerThread:
    """uvicorn serving `app` on a daemon thread of this process, ready once it accepts
    connections; port 0 picks a free one. `close()` (or leaving a `with` block) stops it and
    waits for the thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "error",
                 timeout: float = 60):
        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level=log_level))
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


def make_engine(model: str, engine: str = "native", lora: dict[str, str] | None = None,
                device: str = "cpu", max_num_seqs: int = 64, kv_cache_gb: float = 1.0,
                block_size: int = 16):
    """The engine object the app serves (native or hf)."""
    if engine == "native":
        from .native import NativeEngine

        return NativeEngine(model, device, max_num_seqs=max_num_seqs, block_size=block_size,
                            kv_cache_bytes=int(kv_cache_gb * 2**30), adapters=lora,
                            start=False)  # serve() runs its loop on this thread
    if engine == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model, lora, device=device)
    raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{engine}'.")


def serve(model: str, engine: str = "native", host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, lora_modules: list[str] | None = None,
          served_name: str | None = None, device: str = "cpu", max_num_seqs: int = 64,
          kv_cache_gb: float = 1.0, block_size: int = 16) -> None:
    lora = parse_lora_modules(lora_modules or [])
    served = served_name or os.path.basename(os.path.normpath(model))
    if engine == "vllm":
        if shutil.which("vllm") is None:
            raise UserError("--engine vllm needs vLLM (pip install vllm, Linux with a CUDA GPU); "
                            "--engine native and --engine hf run anywhere.")
        argv = vllm_argv(model, host, port, api_key, lora, served)
        print(" ".join(argv), file=sys.stderr)
        os.execvp(argv[0], argv)
    try:
        import uvicorn
    except ImportError:
        raise UserError("serving needs the 'serve' extra: uv sync --extra serve.") from None
    from .app import create_app

    eng = make_engine(model, engine, lora, device, max_num_seqs, kv_cache_gb, block_size)
    app = create_app(eng, served, api_key=api_key)
    if engine != "native":
        print(f"serving {served} on http://{host}:{port}/v1 (engine {engine})", file=sys.stderr)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    # the model runs on this (main) thread, HTTP on a side thread: see native.py
    http = ServerThread(app, host, port, log_level="warning")
    print(f"serving {served} on http://{host}:{port}/v1 (engine {engine})", file=sys.stderr)
    threading.Thread(target=lambda: (http.thread.join(), eng.stop()), daemon=True).start()
    try:
        eng.run_forever()  # returns when the HTTP server stops
    except KeyboardInterrupt:
        http.close()
