"""`llm-deeper export --format hf`: transformers loads the directory with equal logits and the
same tokenizer; the config puts rope_theta where vLLM and mlx-lm read it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.pretrained.weights import export_hf, load_gguf
from llm_deeper.tokenizers import BPETokenizer
from llm_deeper.torch_engine.model import TorchGPT

from conftest import smollm2_or_skip


def test_exported_smollm2_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pre = load_gguf(smollm2_or_skip())
    out = export_hf(tmp_path / "hf", pre.config, pre.params, pre.tokenizer,
                    chat_template=pre.chat_template, bos_id=pre.bos_id, eos_id=pre.eos_id)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 100000.0 and config["num_key_value_heads"] == 3
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = pre.tokenizer.encode(text)
    assert tok.encode(text, add_special_tokens=False) == ids
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
        ours = TorchGPT(pre.config, pre.params).eval()(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(ours - ref).max() <= 1e-4  # 0.0 in practice: the same float32 operations
    assert (out / "model.safetensors").stat().st_mode & 0o044  # readable by others, as usual


def test_trained_checkpoint_exports_through_the_cli(tmp_path):
    from transformers import AutoModelForCausalLM

    text = "".join(f"Line {i}: the quick brown fox {i % 7}.\n" for i in range(300))
    (tmp_path / "t.txt").write_text(text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "llm_deeper", *a], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=600)
    r = run("train", "--preset", "small", "--data", "t.txt", "--tokenizer", "bpe:300",
            "--steps", "5", "--context-length", "32", "--d-model", "32", "--n-layer", "2",
            "--eval-iters", "1", "--no-progress", "--out", "ck")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("export", "--checkpoint", "ck", "--format", "hf", "--out", "hf")
    assert r.returncode == 0, r.stderr[-2000:]
    from llm_deeper.checkpoint import load_checkpoint

    cfg, params, tok, _ = load_checkpoint(tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = np.array([tok.encode("Line 12: the quick")])
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits[0].numpy()
    assert np.abs(GPT(cfg, params).forward(ids)[0][0] - ref).max() <= 1e-4


def test_gpt2_style_models_are_refused_with_the_reason(tmp_path):
    cfg = ModelConfig(vocab_size=300, context_length=8, n_layer=1, n_head=2, d_model=8)
    tok = BPETokenizer.train("some text " * 50, 300)
    with pytest.raises(UserError, match="lacks RMSNorm, SwiGLU, RoPE positions"):
        export_hf(tmp_path / "x", cfg, GPT(cfg).params, tok)
    assert not (tmp_path / "x").exists()  # nothing half-written
