"""A PEFT LoRA adapter converted to mlx-lm's format gives, under mlx-lm on the exported SmolLM2
directory, the same first 32 greedy tokens as transformers + PEFT on three prompts."""

import json

import pytest

from conftest import smollm2_or_skip

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "How many days are there from 2024-01-01 to 2024-03-01?"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter on every linear layer with random (non-zero) A and B, small enough to
    keep the text fluent and large enough to change it."""
    smollm2_or_skip()
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (uv sync --extra mlx)")
    from llm_deeper.hf.models import load, random_lora

    model, tok = load("smollm2-135m")
    peft = random_lora(model, rank=8, alpha=16, targets="all-linear", std=0.03, seed=0)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    peft.save_pretrained(out)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True) for p in PROMPTS]
    return out, peft.eval(), tok, prompts


def _hf_greedy(model, tok, prompts, n=32):
    import torch

    outs = []
    for p in prompts:
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            g = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, temperature=None,
                               top_p=None, top_k=None, pad_token_id=tok.eos_token_id)
        toks = g[0, ids.shape[1]:].tolist()
        outs.append(toks[:toks.index(tok.eos_token_id)] if tok.eos_token_id in toks else toks)
    return outs


@pytest.mark.slow  # ~75 s: mlx-lm and transformers each generate 3 x 32 tokens twice
def test_converted_adapter_matches_peft_greedy_tokens(adapter, tmp_path):
    from llm_deeper.hf.mlx import mlx_greedy, peft_to_mlx_adapter
    from llm_deeper.hf.models import hf_dir

    peft_dir, peft_model, tok, prompts = adapter
    mlx_dir = peft_to_mlx_adapter(str(peft_dir), str(tmp_path / "mlx"))
    cfg = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert cfg["lora_parameters"]["scale"] == 2.0 and cfg["num_layers"] == 30
    assert set(cfg["lora_parameters"]["keys"]) == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

    want = _hf_greedy(peft_model, tok, prompts)
    got = mlx_greedy(hf_dir("smollm2-135m"), prompts, 32, adapter_dir=mlx_dir)
    assert got == want, [tok.decode(x) for x in got + want]
    assert all(len(x) >= 8 for x in want)
    # the adapter is really applied: without it both libraries say something else
    base = mlx_greedy(hf_dir("smollm2-135m"), prompts, 32)
    assert base != got
    with peft_model.disable_adapter():
        assert _hf_greedy(peft_model, tok, prompts) == base


def test_conversion_refuses_what_it_cannot_map(tmp_path):
    from llm_deeper.errors import UserError
    from llm_deeper.hf.mlx import peft_to_mlx_adapter

    with pytest.raises(UserError, match="not a PEFT adapter directory"):
        peft_to_mlx_adapter(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="only LoRA"):
        peft_to_mlx_adapter(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
