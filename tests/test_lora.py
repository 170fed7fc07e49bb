"""LoRA in the NumPy engine: gradients against autograd, frozen base, merge/unmerge, adapter I/O."""

import numpy as np
import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.lora import (
    LoraConfig,
    adapter_tensors,
    add_lora,
    load_adapter,
    merge,
    save_adapter,
    unmerge,
)
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.model import forward

from conftest import rel_err

CFG = ModelConfig(vocab_size=13, context_length=8, n_layer=2, n_head=4, n_kv_head=2, d_model=16,
                  d_ff=24, norm="rmsnorm", activation="swiglu", position="rope")


def lora_model(targets=("all-linear",)):
    model = GPT(CFG, seed=0, dtype=np.float64)
    names = add_lora(model, LoraConfig(rank=3, alpha=6.0, targets=list(targets)), seed=1)
    rng = np.random.default_rng(2)
    for n in names:  # B starts at 0; make it non-zero so every path carries gradient
        model.params[n + ".lora_B"] += rng.normal(size=model.params[n + ".lora_B"].shape) * 0.1
    return model, names


def test_lora_gradients_match_autograd_and_base_is_frozen():
    model, names = lora_model()
    assert len(names) == 2 * 7  # wq wk wv wo w1 w2 w3 in each of 2 layers
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 13, (2, 8)), rng.integers(0, 13, (2, 8))
    loss, grads = model.loss_and_grads(ids, targets)
    assert set(grads) == {n + s for n in names for s in (".lora_A", ".lora_B")}
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    _, tl = forward(tp, CFG, torch.tensor(ids), torch.tensor(targets),
                    ctx=StepContext(lora={n: 2.0 for n in names}))
    tl.backward()
    assert abs(loss - tl.item()) < 1e-10
    for k, g in grads.items():
        assert rel_err(g, tp[k].grad) < 1e-6, k


def test_b_zero_starts_at_the_base_model():
    base = GPT(CFG, seed=0, dtype=np.float64)
    ids = np.random.default_rng(1).integers(0, 13, (1, 8))
    before = base.forward(ids)[0]
    add_lora(base, LoraConfig(rank=4, targets=["wq", "wv"]))
    assert np.array_equal(base.forward(ids)[0], before)


def test_merge_and_unmerge():
    model, _ = lora_model()
    ids = np.random.default_rng(3).integers(0, 13, (2, 8))
    w0 = {k: v.copy() for k, v in model.params.items()}
    with_adapter = model.forward(ids)[0]
    merge(model)
    assert model.lora == {}
    assert rel_err(model.forward(ids)[0], with_adapter) < 1e-12  # folded in: same function
    unmerge(model)
    assert all(rel_err(model.params[k], w0[k]) < 1e-12 for k in w0)
    assert rel_err(model.forward(ids)[0], with_adapter) < 1e-12


def test_adapter_saved_alone_and_reloaded(tmp_path):
    model, names = lora_model(["wq", "wv"])
    save_adapter(model, LoraConfig(rank=3, alpha=6.0, targets=["wq", "wv"]), tmp_path / "ad")
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert set(saved) == set(adapter_tensors(model)) and len(saved) == 2 * len(names)
    fresh = GPT(CFG, seed=0, dtype=np.float64)
    load_adapter(fresh, tmp_path / "ad")
    ids = np.random.default_rng(4).integers(0, 13, (1, 8))
    assert rel_err(fresh.forward(ids)[0], model.forward(ids)[0]) < 1e-6


def test_bad_lora_target():
    with pytest.raises(UserError, match="unknown LoRA target"):
        add_lora(GPT(CFG), LoraConfig(targets=["wz"]))
