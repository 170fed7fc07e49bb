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


# `with Server(*serve_args) as base_url: ...`: `llm-deeper serve` on a free loopback port
from llm_deeper.serve.process import ServerProcess as Server  # noqa: F401 (re-exported for the lessons)
