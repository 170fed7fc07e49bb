"""The code sandbox (evaluation/sandbox.py): a correct program passes, a wrong one fails, and a
hanging, a memory-hungry, a file-writing, a process-starting and a networking program are each
contained and reported; pass@k equals its definition."""

import itertools
import math
import os
from pathlib import Path

import pytest

from llm_deeper.errors import UserError
from llm_deeper.evaluation.sandbox import Limits, pass_at_k, run_program

FAST = Limits(wall_s=5, cpu_s=5, memory_mb=256)

ADD = """
def add(a, b):
    return a + b
"""


def test_a_correct_program_passes_and_a_wrong_one_fails():
    r = run_program(ADD + "assert add(2, 3) == 5\nprint('ok')", FAST)
    assert r.status == "passed" and r.passed and r.output == "ok"
    r = run_program(ADD + "assert add(2, 3) == 6, 'add(2, 3) should be 6'", FAST)
    assert r.status == "failed" and "add(2, 3) should be 6" in r.output
    assert run_program("def f(:\n  pass", FAST).status == "failed"  # a syntax error


def test_a_hanging_program_is_stopped():
    r = run_program("while True:\n    pass", Limits(wall_s=2, cpu_s=30))
    assert r.status == "timeout" and r.seconds < 10
    r = run_program("import time\ntime.sleep(60)", Limits(wall_s=1))  # no CPU used: wall clock
    assert r.status == "timeout" and r.seconds < 10


def test_a_memory_flood_is_contained():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))", FAST)
    assert r.status == "memory"


def test_writes_stay_in_the_working_directory_which_disappears(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                 f"from pathlib import Path\nPath({str(target)!r}).write_text('x')",
                 f"import os\nos.remove({str(tmp_path / 'keep.txt')!r})"):
        (tmp_path / "keep.txt").write_text("keep")
        r = run_program(code, FAST)
        assert r.status == "refused" and "outside the working directory" in r.output, code
        assert not target.exists() and (tmp_path / "keep.txt").read_text() == "keep"
    r = run_program("import os\nopen('here.txt', 'w').write('fine')\nprint(os.getcwd())", FAST)
    assert r.passed and not Path(r.output).exists()  # the working directory is gone
    assert run_program("open('big', 'wb').write(b'0' * (20 << 20))", FAST).status == "refused"


def test_no_processes_and_no_network():
    for code in ("import subprocess\nsubprocess.run(['ls'])", "import os\nos.system('ls')",
                 "import os\nos.fork()"):
        r = run_program(code, FAST)
        assert r.status == "refused" and "processes" in r.output, code
    r = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))", FAST)
    assert r.status == "refused" and "network" in r.output


def test_the_environment_is_not_the_callers():
    os.environ["LLM_DEEPER_SECRET"] = "x"
    try:
        r = run_program("import os\nprint(sorted(k for k in os.environ if 'SECRET' in k))", FAST)
    finally:
        del os.environ["LLM_DEEPER_SECRET"]
    assert r.passed and r.output == "[]"


def test_pass_at_k_is_the_chance_that_k_of_n_samples_include_a_pass():
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (10, 3, 5), (6, 6, 2), (8, 1, 8)]:
        samples = [True] * c + [False] * (n - c)
        draws = list(itertools.combinations(range(n), k))
        exact = sum(any(samples[i] for i in d) for d in draws) / len(draws)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)  # pass@1 = the share that passed
    with pytest.raises(UserError):
        pass_at_k(5, 6, 1)
