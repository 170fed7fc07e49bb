"""An OpenAI-compatible server: protocol.py (request/response shapes), parsing.py (content,
reasoning, tool calls), grammar.py (constrained decoding), engine.py (the engine protocol and
the transformers engine), native.py (our continuous-batching engine over a paged KV cache),
app.py (the FastAPI app), and `serve()` below, which the CLI runs."""

from __future__ import annotations

import os
import shutil
import sys
import threading

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


class ServerProcess:
    """`llm-deeper serve ARGS` as a child process on a free loopback port, for lessons, tests
    and notebooks: `with ServerProcess("--engine", "hf") as base_url: ...`. Ready once /health
    answers 200 (ours answers JSON, vLLM an empty body); stopped on exit. The server's output
    goes to `log` (a path), else to a temporary file; its tail is in the error if it exits."""

    def __init__(self, *args: str, log=None, timeout: float = 300):
        self.args, self.log_path, self.timeout = list(args), log, timeout

    def __enter__(self) -> str:
        import socket
        import subprocess
        import tempfile
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = open(self.log_path, "w+b") if self.log_path else tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_deeper", "serve", "--port",
                                      str(port), *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-3000:]
                self.__exit__()
                raise UserError(f"the server exited:\n{tail}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return base
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise UserError(f"the server did not start in {self.timeout:.0f} s.")

    def __exit__(self, *exc) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "error",
                    timeout: float = 60):
    """uvicorn serving `app` on a daemon thread, once it accepts connections; port 0 picks a
    free one. Returns (server, thread, port); `server.should_exit = True` stops it."""
    import socket
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True, name="http")
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise UserError(f"could not serve on {host}:{port} (is the port in use?).")
        time.sleep(0.05)
    return server, thread, port


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
        from .engine import HFEngine

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
    server, http, _ = start_in_thread(app, host, port, log_level="warning")
    print(f"serving {served} on http://{host}:{port}/v1 (engine {engine})", file=sys.stderr)
    threading.Thread(target=lambda: (http.join(), eng.stop()), daemon=True).start()
    try:
        eng.run_forever()  # returns when the HTTP server stops
    except KeyboardInterrupt:
        server.should_exit = True
