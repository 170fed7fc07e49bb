"""`llm-deeper eval code`: write functions with a model, run them against hidden tests, pass@k.

For each task of data/code_tasks.py the model is asked, in its chat template, for the function
(signature and docstring shown); the reply's code (the first ```python block, or the whole
reply) becomes a program with the task's asserts after it, run in the sandbox
(evaluation/sandbox.py). A task's n samples with c passing give pass@k = 1 - C(n-c, k)/C(n, k);
the report averages over tasks. Greedy decoding (temperature 0) gives one sample per task:
pass@1 is then the share of tasks solved.
"""

from __future__ import annotations

import json
import re

from ..errors import UserError
from .sandbox import Limits, pass_at_k, run_program

ASK = ("Write this Python function. Reply with the complete function in one ```python code "
       "block and nothing else.\n\n```python\n{prompt}```")
_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def extract_code(reply: str, task) -> str:
    """The code of a reply: its first fenced block (an unclosed one runs to the end), else the
    reply itself; a reply that only continues the body gets the task's signature before it."""
    m = _BLOCK.search(reply)
    code = m.group(1) if m else reply
    if not re.search(rf"^\s*def\s+{re.escape(task.name)}\s*\(", code, re.M):
        code = task.prompt + code
    return code


def program(task, code: str) -> str:
    return f"{code}\n\n{task.tests}\n"


def score(samples: dict[str, list[bool]], ks=(1,)) -> dict:
    """{task: [passed per sample]} -> pass@k for each k <= n, averaged over the tasks."""
    n = min(len(v) for v in samples.values())
    out = {}
    for k in ks:
        if k > n:
            raise UserError(f"pass@{k} needs at least {k} samples per task (--n), got {n}.")
        out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in samples.values()) / len(
            samples)
    return out


def run(model: str, engine: str, adapter, params, n: int = 1, ks=(1,), n_tasks=None,
        limits: Limits | None = None, report=None, log=print) -> dict:
    from ..chat.template import render_chat
    from ..chat.terminal import pretrained_engine
    from ..data.code_tasks import TASKS
    from ..generation import run as drain
    from ..generation import stream

    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}.")
    if n > 1 and params.greedy:
        raise UserError("greedy decoding gives the same answer every time: for --n > 1 set "
                        "--temperature (e.g. 0.8).")
    fn, tok, template, stop = pretrained_engine(model, engine, adapter)
    tasks = TASKS[:n_tasks] if n_tasks else TASKS
    samples, rows = {}, []
    for task in tasks:
        messages = [{"role": "user", "content": ASK.format(prompt=task.prompt)}]
        text = render_chat(template, messages) if template else ASK.format(prompt=task.prompt)
        samples[task.name] = []
        for i in range(n):
            p = params if params.seed is None else type(params)(**{**vars(params),
                                                                   "seed": params.seed + i})
            reply = drain(stream(fn, tok, tok.encode(text), p, stop)).text
            result = run_program(program(task, extract_code(reply, task)), limits)
            samples[task.name].append(result.passed)
            rows.append({"task": task.name, "sample": i, "status": result.status,
                         "reply": reply, "output": result.output})
        log(f"  {task.name}: {sum(samples[task.name])}/{n} passed "
            f"({', '.join(r['status'] for r in rows[-n:])})")
    scores = score(samples, ks)
    summary = {"eval": "code", "model": model, "adapter": adapter, "tasks": len(tasks),
               "samples_per_task": n, "temperature": params.temperature, **{
                   k: round(v, 4) for k, v in scores.items()}}
    if report:
        from ..util.paths import atomic_write_text

        atomic_write_text(report, json.dumps({**summary, "samples": rows}, indent=1))
    log(json.dumps(summary))
    return summary
