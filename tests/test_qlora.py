"""QLoRA in our PyTorch engine: the NF4 product and its gradient, a frozen 4-bit base under
training, and the PEFT adapter it writes (docs/finetuning.md, "QLoRA on CPU")."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.params import init_params
from llm_deeper.quantization.nf4 import nf4_dequantize, nf4_quantize
from llm_deeper.quantization.torch_nf4 import NF4Weight, quantize_params
from llm_deeper.torch_engine.model import forward
from llm_deeper.torch_engine.qlora import (
    LAYER_WEIGHTS,
    _LabelledRows,
    add_lora,
    base_bytes,
    save_peft_adapter,
    target_names,
    train_step,
)

from conftest import smollm2_or_skip

torch.set_num_threads(1)  # tiny models: a second thread only waits (util/threads.py)
CFG = ModelConfig(vocab_size=96, context_length=32, n_layer=2, n_head=4, n_kv_head=2,
                  d_model=64, d_ff=128, norm="rmsnorm", activation="swiglu", position="rope",
                  attention="gqa", tie_embeddings=True)


def tiny_params(method: str = "qlora", seed: int = 0) -> dict:
    params = {k: torch.from_numpy(v.copy()) for k, v in init_params(CFG, seed).items()}
    if method == "qlora":
        quantize_params(params, [f"h.{i}.{w}" for i in range(CFG.n_layer) for w in LAYER_WEIGHTS])
    return params


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_weight_is_the_numpy_nf4_bit_for_bit(double_quant):
    w = np.random.default_rng(0).standard_normal((40, 70)).astype(np.float32)  # 2,800: padded
    q = NF4Weight.from_float(w, 64, double_quant)
    ref = nf4_quantize(w, 64, double_quant)
    assert np.array_equal(q.dequantize().numpy(), nf4_dequantize(ref))
    assert q.nbytes == ref.nbytes and q.codes.dtype == torch.uint8


def test_nf4_linear_is_f_linear_with_the_dequantized_weight_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    q = NF4Weight.from_float(torch.randn(48, 64, generator=g))
    w = q.dequantize()
    b = torch.randn(48, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 64, generator=g, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    y, y_ref = q.linear(x, b), F.linear(x2, w, b2)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-6)  # dL/dx = dL/dy W
    torch.testing.assert_close(b.grad, b2.grad, rtol=0, atol=1e-6)
    # and in float64 against finite differences (W dequantized in x's dtype)
    x64 = torch.randn(3, 64, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: q.linear(t), (x64,), fast_mode=True)


def test_nf4_product_saves_no_float_weight_for_backward():
    """Plain autograd keeps the float W until backward; NF4Matmul keeps nothing at all."""
    q = NF4Weight.from_float(torch.randn(32, 64))
    x = torch.randn(4, 64, requires_grad=True)

    def saved(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.numel()) or t,
                                                      lambda t: t):
            fn()
        return shapes

    assert 32 * 64 in saved(lambda: F.linear(x, q.dequantize()))  # W (as its transpose)
    assert saved(lambda: q.linear(x)) == []


def test_qlora_trains_a_frozen_nf4_base_and_the_loss_falls():
    params = tiny_params("qlora")
    frozen = {k: (v.codes.clone(), v.absmax.clone()) for k, v in params.items()
              if isinstance(v, NF4Weight)}
    assert len(frozen) == CFG.n_layer * len(LAYER_WEIGHTS)
    floats = {k: v.clone() for k, v in params.items() if isinstance(v, torch.Tensor)}
    assert base_bytes(params) < 0.5 * sum(v.nbytes for v in init_params(CFG).values())
    names = target_names(CFG, "all-linear")
    lora = add_lora(params, names, rank=8, alpha=16.0)
    trainable = [params[n + s] for n in names for s in (".lora_A", ".lora_B")]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    ids = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(ids, -1, 1)
    targets[:, :6] = -100  # only the "assistant" part is learned
    losses = []
    for step in range(20):
        losses.append(train_step(params, CFG, lora, ids, targets, checkpointing=step % 2 == 0))
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.85 * losses[0], losses  # 4.57 -> 3.45 (a frozen random head)
    for k, (codes, absmax) in frozen.items():  # still NF4, untouched, no gradient anywhere
        assert isinstance(params[k], NF4Weight)
        assert torch.equal(params[k].codes, codes) and torch.equal(params[k].absmax, absmax)
    for k, v in floats.items():
        assert v.grad is None and not params[k].requires_grad and torch.equal(params[k], v)


def test_checkpointing_gives_the_same_gradients():
    params = tiny_params("qlora")
    lora = add_lora(params, target_names(CFG, "wq,v_proj,w2"), rank=2, alpha=4.0)
    for n in lora:
        torch.nn.init.normal_(params[n + ".lora_B"].data)  # B = 0 gives A no gradient
    ids = torch.randint(0, CFG.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    grads = []
    for ck in (False, True):
        train_step(params, CFG, lora, ids, torch.roll(ids, -1, 1), ck)
        grads.append({n: params[n + ".lora_A"].grad.clone() for n in lora})
        for n in lora:
            params[n + ".lora_A"].grad = params[n + ".lora_B"].grad = None
    for n in lora:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


def test_the_saved_adapter_is_a_peft_adapter_with_the_same_logits(tmp_path):
    from llm_deeper.pretrained.weights import read_peft_lora

    params = tiny_params("lora")
    lora = add_lora(params, target_names(CFG, "all-linear"), rank=4, alpha=8.0, seed=3)
    for n in lora:
        torch.nn.init.normal_(params[n + ".lora_B"].data, std=0.05)
    ids = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4))
    keep = torch.ones(ids.shape, dtype=torch.bool)
    with torch.no_grad():
        ours, _ = forward(params, CFG, ids, ctx=_LabelledRows(lora, keep, False))
    save_peft_adapter(tmp_path / "adapter", params, lora, rank=4, alpha=8.0)
    back = {k: v for k, v in tiny_params("lora").items()}
    scales = {}
    for n, (A, B, s) in read_peft_lora(tmp_path / "adapter", CFG).items():  # the server's reader
        back[n + ".lora_A"], back[n + ".lora_B"], scales[n] = (torch.from_numpy(A),
                                                              torch.from_numpy(B), s)
    assert scales == lora
    with torch.no_grad():
        again, _ = forward(back, CFG, ids, ctx=_LabelledRows(scales, keep, False))
    assert torch.equal(ours, again)
    # transformers + PEFT read it too, on the same base exported as an HF directory
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm_deeper.pretrained.weights import export_hf

    base = {k: v.numpy() for k, v in tiny_params("lora").items()}
    export_hf(tmp_path / "hf", CFG, base)
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"),
                                  tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = m(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours.view_as(theirs), rtol=0, atol=1e-5)


def test_bad_input_is_one_sentence(tmp_path, capsys):
    from llm_deeper.cli import main

    out = tmp_path / "out"
    for args, message in (
            (["--model", "smollm2-135m", "--engine", "torch", "--method", "full"],
             "--engine torch trains --method lora or qlora"),
            (["--checkpoint", str(tmp_path), "--engine", "torch"], "give --model"),
            (["--model", "smollm2-135m", "--engine", "torch", "--merge", str(tmp_path / "m")],
             "llm-deeper merge --adapter"),
            (["--model", "smollm2-135m", "--engine", "torch", "--double-quant"],
             "--double-quant quantizes")):
        assert main(["finetune", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    with pytest.raises(UserError, match="unknown LoRA target 'wz'"):
        target_names(CFG, "wq,wz")


@pytest.mark.slow  # ~1-2 minutes: loads SmolLM2, quantizes 210 matrices, trains 3 steps
def test_qlora_on_smollm2_through_the_command(tmp_path):
    smollm2_or_skip()
    import json

    from llm_deeper.cli import main

    assert main(["finetune", "--model", "smollm2-135m", "--engine", "torch", "--method", "qlora",
                 "--steps", "3", "--batch-size", "1", "--lr", "3e-3", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    r = json.loads((tmp_path / "training.json").read_text())
    assert r["nf4_matrices"] == 210 and r["trainable_params"] == 4_884_480
    assert r["base_weight_bytes"] < 0.35 * 538_060_032  # 4.5 bits instead of 32, wte in float
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
