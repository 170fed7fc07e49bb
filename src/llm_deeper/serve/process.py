"""`llm-deeper serve` as a child process, for lessons, tests and notebooks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from ..errors import UserError


class ServerProcess:
    """`llm-deeper serve ARGS` as a child process on a free loopback port, for lessons, tests
    and notebooks: `with ServerProcess("--engine", "hf") as base_url: ...`. Ready once /health
    answers 200 (ours answers JSON, vLLM an empty body); stopped on exit. The server's output
    goes to `log` (a path), else to a temporary file; its tail is in the error if it exits."""

    def __init__(self, *args: str, log=None, timeout: float = 300):
        self.args, self.log_path, self.timeout = list(args), log, timeout

    def __enter__(self) -> str:
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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
