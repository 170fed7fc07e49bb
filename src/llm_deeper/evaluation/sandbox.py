"""Running generated code: a subprocess with limits, and pass@k.

Code models are judged by running what they write against unit tests, not by comparing text
(two correct programs rarely share their words; a near-copy of a correct one can fail). Running
model output means running untrusted code, so each program gets a sandbox:

* its own Python process (`python -I`: no user site-packages, no PYTHON* variables), in a new
  session so that a timeout kills it and every process it started;
* a fresh temporary working directory, deleted afterwards with whatever was written there;
* resource limits set in the child before Python starts (RLIMIT_AS: address space, so memory
  floods end in MemoryError; RLIMIT_CPU; RLIMIT_FSIZE: the largest file it may write;
  RLIMIT_NOFILE) and a wall-clock limit enforced from outside;
* an audit hook (PEP 578) installed before the program runs, which it cannot remove: opening a
  file for writing, creating, renaming or deleting anything outside the working directory,
  starting processes, and opening network sockets are refused with PermissionError.

The audit hook guards the Python level, which is what a code benchmark needs (programs written
by a model, not by an attacker); a hostile program could still reach the OS through ctypes,
which a container or a seccomp filter would stop. `run_program` returns one of: passed, failed
(an exception, e.g. a failing assert), timeout, memory, refused (the hook said no), with the
last lines of the output.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ..errors import UserError

# The child's entry point: the audit hook first, then the program, mapped to an exit code.
_RUNNER = r'''
import os, sys
root = os.path.realpath(os.getcwd())

def inside(path):
    try:
        p = os.path.realpath(os.fspath(path) if not isinstance(path, int) else root)
    except (TypeError, ValueError):
        return False
    return p == root or p.startswith(root + os.sep)

WRITE = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
         "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile")
SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn",
         "os.spawn", "pty.spawn")
NET = ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo")

def hook(event, args):
    if event == "open":  # open(path, mode, flags): builtins give a mode, os.open flags
        mode = args[1] if len(args) > 1 else None
        flags = (args[2] if len(args) > 2 else 0) or 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
            flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if writing and not inside(args[0]):
            raise PermissionError(f"sandbox: writing outside the working directory: {args[0]}")
    elif event in WRITE or event.startswith(("os.remove", "os.rename")):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if any(not inside(p) for p in paths):
            raise PermissionError(f"sandbox: {event} outside the working directory: {paths}")
    elif event in SPAWN or event.startswith(("os.exec", "os.spawn", "os.posix_spawn")):
        raise PermissionError(f"sandbox: {event}: starting processes is not allowed")
    elif event in NET:
        raise PermissionError(f"sandbox: {event}: the network is not allowed")

source = sys.stdin.read()
sys.addaudithook(hook)
try:
    exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
except MemoryError:
    sys.stderr.write("MemoryError\n"); os._exit(3)
except PermissionError as exc:
    if str(exc).startswith("sandbox:"):
        sys.stderr.write(f"{exc}\n"); os._exit(4)
    raise
except OSError as exc:  # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE fails with EFBIG
    import errno
    if exc.errno == errno.EFBIG:
        sys.stderr.write(f"sandbox: a file over the size limit: {exc}\n"); os._exit(4)
    raise
'''

EXIT = {0: "passed", 3: "memory", 4: "refused"}


@dataclass
class Limits:
    wall_s: float = 10.0  # seconds of wall-clock time
    cpu_s: int = 10  # seconds of CPU time (RLIMIT_CPU)
    memory_mb: int = 512  # address space (RLIMIT_AS); Python itself needs ~30 MB of it
    file_mb: int = 8  # largest file the program may write (RLIMIT_FSIZE)
    open_files: int = 64


@dataclass
class Result:
    status: str  # passed, failed, timeout, memory, refused
    seconds: float
    output: str  # the last lines of stdout and stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limit(limits: Limits):
    def set_limits():  # runs in the child between fork and exec
        import resource

        mb = 1 << 20
        for what, value in ((resource.RLIMIT_AS, limits.memory_mb * mb),
                            (resource.RLIMIT_CPU, limits.cpu_s),
                            (resource.RLIMIT_FSIZE, limits.file_mb * mb),
                            (resource.RLIMIT_NOFILE, limits.open_files),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(what, (value, value))
    return set_limits


def run_program(source: str, limits: Limits | None = None) -> Result:
    """Run `source` (a program: completion + its tests) in the sandbox; never raises for what
    the program does."""
    if sys.platform == "win32":
        raise UserError("the code sandbox uses POSIX resource limits: run it on Linux or macOS.")
    limits = limits or Limits()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llm-deeper-sandbox-") as work:
        env["HOME"] = env["TMPDIR"] = work
        proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER], cwd=work, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=_limit(limits))
        try:
            out, _ = proc.communicate(source, timeout=limits.wall_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            code = None
    seconds = time.perf_counter() - t0
    if code is None or code in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif code == -signal.SIGXFSZ:
        status = "refused"  # a file larger than file_mb
    else:
        status = EXIT.get(code, "failed")
    tail = "\n".join((out or "").strip().splitlines()[-8:])
    return Result(status, seconds, tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k (Chen et al., 2021) from n samples of which c passed:
    1 - C(n - c, k) / C(n, k), the chance that k samples drawn from the n without replacement
    include a passing one; computed as a product, 1 - prod_{i=n-c+1}^{n} (1 - k / i), which
    never forms the huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise UserError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
