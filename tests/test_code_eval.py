"""`eval code`: every built-in task's reference solution passes its hidden tests in the sandbox
(and a wrong body fails them), replies are turned into programs as models write them, pass@k
is averaged over tasks, and SmolLM2 is scored end to end through the command line."""

import json
import os
import subprocess
import sys

import pytest

from llm_deeper.data.code_tasks import TASKS
from llm_deeper.errors import UserError
from llm_deeper.evaluation.code_eval import extract_code, program, score
from llm_deeper.evaluation.sandbox import Limits, run_program

from conftest import smollm2_or_skip


def test_the_tasks_are_sound():
    assert len(TASKS) >= 30 and len({t.name for t in TASKS}) == len(TASKS)
    source = "\n\n".join(t.reference for t in TASKS) + "\n" + "\n".join(t.tests for t in TASKS)
    assert run_program(source, Limits(wall_s=30)).passed  # every reference passes (one run)
    wrong = "\n\n".join(t.prompt + "    return None\n" for t in TASKS[:6])
    for t in TASKS[:6]:  # a body that returns nothing fails each task's tests
        assert not run_program(wrong + "\n" + t.tests, Limits(wall_s=10)).passed, t.name


def test_replies_become_programs():
    task = TASKS[0]  # add
    fenced = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds."
    assert extract_code(fenced, task) == "def add(a, b):\n    return a + b\n"
    body_only = "    return a + b\n"
    assert extract_code(body_only, task) == task.prompt + body_only
    unclosed = "```python\ndef add(a, b):\n    return a - b\n"
    assert extract_code(unclosed, task).rstrip().endswith("return a - b")
    assert run_program(program(task, extract_code(fenced, task))).passed
    assert not run_program(program(task, extract_code(unclosed, task))).passed


def test_pass_at_k_averages_over_tasks():
    s = score({"a": [True, False, False, False], "b": [False] * 4}, ks=(1, 2, 4))
    assert s["pass@1"] == pytest.approx(0.125)  # (1/4 + 0) / 2
    assert s["pass@2"] == pytest.approx(0.25)  # (1 - C(3,2)/C(4,2)) / 2 = (1/2) / 2
    assert s["pass@4"] == pytest.approx(0.5)
    with pytest.raises(UserError, match="at least 8 samples"):
        score({"a": [True] * 4}, ks=(8,))


def test_eval_code_scores_smollm2_through_the_command(tmp_path):
    smollm2_or_skip()
    report = tmp_path / "code.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "llm_deeper", "eval", "code", "--tasks", "3",
                        "--max-tokens", "64", "--report", str(report)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == 3 and 0 <= summary["pass@1"] <= 1
    rows = json.loads(report.read_text())["samples"]
    assert len(rows) == 3 and {row["status"] for row in rows} <= {
        "passed", "failed", "timeout", "memory", "refused"}
    assert summary["pass@1"] == pytest.approx(sum(row["status"] == "passed" for row in rows) / 3)
    bad = subprocess.run([sys.executable, "-m", "llm_deeper", "eval", "code", "--n", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "--temperature" in bad.stderr
