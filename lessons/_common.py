"""Shared by the lessons: where figures go, and a quick mode for the tests."""

import os
from pathlib import Path

QUICK = bool(os.environ.get("LLM_DEEPER_QUICK"))  # tests set it: fewer steps, same checks
OUT = Path(os.environ.get("LLM_DEEPER_LESSONS_OUT", "runs/lessons"))
OUT.mkdir(parents=True, exist_ok=True)


def check(name: str, ok: bool) -> None:
    print(f"  check: {name}: {'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(f"lesson check failed: {name}")


class Server:
    """`llm-deeper serve ARGS` in a child process on a free loopback port, for the serving
    lessons: `with Server() as base_url: ...`; stopped on exit."""

    def __init__(self, *args: str):
        self.args = list(args)

    def __enter__(self) -> str:
        import socket
        import subprocess
        import sys
        import tempfile
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_deeper", "serve", "--port",
                                      str(port), *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit("the server exited:\n" + self.log.read().decode()[-2000:])
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:  # ours answers JSON, vLLM an empty body
                        return base
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise SystemExit("the server did not start in 5 minutes")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
