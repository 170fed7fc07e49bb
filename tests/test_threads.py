"""Threads are chosen (util/threads.py): one per core that nothing else runs on, or what the
user says; work too small to split runs on one. (The speed this buys beside a busy process is
measured in docs/benchmarks.md, not asserted here.)"""

import os
import subprocess
import sys
import time

import pytest

from llm_deeper.util import threads


def test_a_busy_neighbour_takes_its_core():
    cores = threads.available_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.idle_cores() <= cores - 1
    finally:
        busy.kill()
        busy.wait()


def test_the_user_decides_first(monkeypatch):
    monkeypatch.setenv("LLM_DEEPER_THREADS", "3")
    assert threads.chosen_threads() == 3
    monkeypatch.delenv("LLM_DEEPER_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.chosen_threads() is None  # the libraries read OMP_NUM_THREADS themselves
    monkeypatch.setenv("LLM_DEEPER_THREADS", "many")
    from llm_deeper.errors import UserError

    with pytest.raises(UserError, match="whole number"):
        threads.chosen_threads()


def test_configure_sets_blas_and_torch():
    code = ("import numpy, torch\n"
            "from threadpoolctl import threadpool_info\n"
            "from llm_deeper.util import threads\n"
            "threads.configure(1)\n"
            "print(torch.get_num_threads(), "
            "sorted({p['num_threads'] for p in threadpool_info()}))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LLM_DEEPER_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.split() == ["1", "[1]"]


def test_small_work_runs_on_one_blas_thread():
    import numpy  # noqa: F401 (loads OpenBLAS)
    from threadpoolctl import threadpool_info

    with threads.single_thread():
        assert {p["num_threads"] for p in threadpool_info()} == {1}
