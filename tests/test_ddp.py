"""torchrun with 2 CPU processes (gloo) takes exactly the steps of one process with the same
global batch: losses equal within 1e-5."""

import json
import os
import subprocess
import sys

from conftest import torchrun

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n"
               for i in range(400))
COMMON = ["train", "--engine", "torch", "--preset", "small", "--data", "text.txt",
          "--steps", "6", "--context-length", "32", "--d-model", "32", "--n-layer", "2",
          "--eval-interval", "3", "--eval-iters", "2", "--no-progress", "--lr", "3e-3"]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    two = torchrun(2, [*COMMON, "--batch-size", "4", "--out", "ddp"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "llm_deeper", *COMMON, "--batch-size", "8",
                          "--out", "single"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    h2 = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())["history"]["train"]
    h1 = json.loads((tmp_path / "single" / "trainer_state.json").read_text())["history"]["train"]
    assert len(h1) == len(h2) == 6
    for (s1, l1), (s2, l2) in zip(h1, h2):
        assert s1 == s2 and abs(l1 - l2) < 1e-5, (h1, h2)
