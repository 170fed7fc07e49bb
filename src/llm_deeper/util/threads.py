"""How many threads the maths gets, chosen rather than left to the libraries.

NumPy's BLAS (OpenBLAS) and PyTorch each start one thread per core. On a quiet 2-core machine
that is right for training (the baby preset trains 12 % faster on 2 threads than on 1). Beside
another busy process it is wrong: a parallel region waits for its partner thread, which waits for
the core the neighbour holds; measured here, 60 NumPy training steps took 22.3 s instead of 10.4 s
on one thread, and the 2,453-parameter toy 9.2 s instead of 4.9 s. Work too small to split (the
toy, one token at a time) gains nothing from a second thread anyway.

So the command line (cli.py) sets, before any command runs:
* `LLM_DEEPER_THREADS=N` if given (or the usual OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, which
  the libraries read themselves and which then win);
* otherwise one thread per core that nothing else is running on: the cores this process may use
  minus the other runnable tasks (from /proc/loadavg, sampled over 50 ms), at least one.
`single_thread()` wraps work that is too small to split. Library users (lessons, notebooks) get
the libraries' defaults unless they call `configure()` themselves.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores(samples: int = 5, interval: float = 0.01) -> int:
    """Cores not taken by other runnable tasks right now (Linux; elsewhere: all of them)."""
    cores = available_cores()
    try:
        others = []
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            others.append(running - 1)  # this process's reading thread is one of them
            time.sleep(interval)
        busy = int(statistics.median(others))
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, min(cores, cores - busy))


def chosen_threads() -> int | None:
    """LLM_DEEPER_THREADS, else None when OMP/OPENBLAS_NUM_THREADS already decide, else the
    idle cores."""
    env = os.environ.get("LLM_DEEPER_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            from ..errors import UserError

            raise UserError(f"LLM_DEEPER_THREADS must be a whole number, got '{env}'.") from None
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS"):
        return None
    return idle_cores()


def configure(n: int | None = None) -> int | None:
    """Give BLAS and PyTorch `n` threads (n=None: `chosen_threads()`); returns the number set.
    Libraries not loaded yet read it from OMP_NUM_THREADS when they load (OpenBLAS and PyTorch's
    OpenMP both do); loaded ones are set directly."""
    n = chosen_threads() if n is None else n
    if n is None:
        return None
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # applied now, never undone: the process's setting
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


@contextlib.contextmanager
def single_thread():
    """One BLAS thread for work too small to split (restored afterwards)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
