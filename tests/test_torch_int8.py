"""The INT8 decoder (quantization/torch_int8.py): its product is the W8A8 formula, smoothing
helps where activations have outlier channels, the decode step and the forward pass agree on a
quantized model, SmolLM2 keeps its quality, and the commands refuse what they cannot do."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.quantization import torch_int8
from llm_deeper.quantization.torch_int8 import Int8Linear, calibrate, quantize_for_inference
from llm_deeper.torch_engine.generate import greedy_batch
from llm_deeper.torch_engine.model import TorchGPT

from conftest import smollm2_or_skip

torch.manual_seed(0)


def by_hand(x, w):
    """The W8A8 product written out in floats: per-row absmax codes of W, per-token of x."""
    sw = w.abs().amax(1) / 127
    wq = torch.round(w / sw[:, None])
    sx = x.abs().amax(1, keepdim=True) / 127
    xq = torch.round(x / sx)
    return (xq.double() @ wq.double().t()) * sx.double() * sw.double()


def test_product_is_the_w8a8_formula_and_close_to_float():
    w, x = torch.randn(96, 64) * 0.05, torch.randn(5, 64)
    q = Int8Linear(w)
    y = q.linear(x)
    torch.testing.assert_close(y.double(), by_hand(x, w), rtol=1e-5, atol=1e-6)
    assert q.codes_t.dtype == torch.int8 and q.nbytes == 96 * 64 + 96 * 4
    rel = (y - F.linear(x, w)).norm() / F.linear(x, w).norm()
    assert 0 < rel < 0.02  # 8-bit rounding of both factors: about 1 % here
    b = torch.randn(96)
    torch.testing.assert_close(q.linear(x[None], b)[0], y + b)  # any leading shape, a bias


def test_smoothing_is_exact_before_rounding_and_helps_with_outlier_channels():
    w, x = torch.randn(128, 64) * 0.05, torch.randn(256, 64)
    x[:, 3] *= 60  # one input channel 60x larger than the rest, as in transformers
    x[:, 17] *= 30
    absmax = x.abs().amax(0)
    plain, smooth = Int8Linear(w), Int8Linear(w, absmax, alpha=0.5, outliers=0)
    both = Int8Linear(w, absmax, alpha=0.5, outliers=0.02)  # the 1 largest channel in float
    assert both.idx.tolist() == [3] and both.w_out_t.shape == (1, 128)
    for q in (smooth, both):
        torch.testing.assert_close(q.dequantized(), w, rtol=0, atol=0.01)  # W diag(s) diag(1/s)
    torch.testing.assert_close(both.dequantized()[:, 3], w[:, 3])  # kept exactly
    ref = F.linear(x, w)

    def err(q):
        return float((q.linear(x) - ref).norm() / ref.norm())
    assert err(both) < err(smooth) < 0.5 * err(plain)


def small_model(**kw):
    cfg = ModelConfig(vocab_size=97, context_length=64, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=64, d_ff=128, norm="rmsnorm", activation="swiglu", position="rope",
                      bias=False, tie_embeddings=True, **kw)
    return TorchGPT(cfg, seed=1).eval()


def test_calibration_records_the_largest_input_of_each_product():
    model = small_model().fuse_for_inference()
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(0))
    absmax = calibrate(model, ids, window=16)
    assert set(absmax) == {f"h.{i}.{n}" for i in range(2)
                           for n in ("attn.wqkv", "attn.wo", "ffn.w13", "ffn.w2")} | {
                               "lm_head.quant"}
    # the first layer's q|k|v read norm1 of the embeddings: recompute its largest |value|
    p = model.param_dict()
    x = F.rms_norm(p["wte"][ids], (64,), p["h.0.norm1.weight"], model.cfg.norm_eps)
    torch.testing.assert_close(absmax["h.0.attn.wqkv"], x.abs().amax(0))
    assert all(torch.is_tensor(v) for v in model._fused.values())  # the recorders are gone


def test_decode_step_equals_forward_on_a_quantized_model_and_bytes_fall():
    model = small_model()
    fp32_bytes = torch_int8.weight_bytes(model)
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(1))
    quantize_for_inference(model, "int8", calibration=torch.randint(0, 97, (64,)))
    assert model.quant == "int8" and torch_int8.weight_bytes(model) < 0.4 * fp32_bytes
    fast = greedy_batch(model, ids, 12, fast=True)
    slow = greedy_batch(model, ids, 12, fast=False)
    assert torch.equal(fast, slow)  # the same products, row by row


def test_refusals():
    with pytest.raises(UserError, match="--quant takes int8"):
        quantize_for_inference(small_model(), "int4")
    with pytest.raises(UserError, match="MLA"):
        quantize_for_inference(small_model(attention="mla", kv_lora_rank=16, q_lora_rank=0,
                                           qk_rope_head_dim=8, qk_nope_head_dim=8,
                                           v_head_dim=16), "int8")


def cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "llm_deeper", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_generate_with_int8_and_the_refusals_of_the_commands():
    smollm2_or_skip()
    r = cli("generate", "--model", "smollm2-135m", "--engine", "torch", "--quant", "int8",
            "--prompt", "The capital of France is", "--max-tokens", "6", "--temperature", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("The capital of France is") and "Paris" in r.stdout
    for args, says in ((("generate", "--model", "smollm2-135m", "--quant", "int8"),
                        "add --engine torch"),
                       (("chat", "--engine", "numpy", "--quant", "int8"), "use --engine torch"),
                       (("serve", "--engine", "hf", "--quant", "int8"), "native engine")):
        r = cli(*args)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_bench_decode_reports_the_int8_ratio_and_perplexity():
    smollm2_or_skip()
    r = cli("bench", "decode", "--quant", "int8", "--batch-sizes", "1", "--new-tokens", "8",
            "--rounds", "1", "--prefill-tokens", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["batch1_int8_vs_fp32"] > 0 and 0 <= line["batch1_int8_token_agreement"] <= 1
    assert abs(line["perplexity_int8_change_pct"]) < 5  # measured +0.5 % (docs/quantization.md)
    assert line["int8_weight_bytes"] < 0.35 * line["fp32_weight_bytes"]


def test_the_native_engine_serves_the_int8_model():
    """Requests decoded together by the serving engine (paged cache, the decode step's rows)
    give the tokens of the same INT8 model run alone."""
    from types import SimpleNamespace

    from llm_deeper.quantization.torch_int8 import calibration_ids
    from llm_deeper.serve.native import NativeEngine
    from native_helpers import V, greedy_alone, run_concurrently, tokens
    from native_helpers import small_model as native_model

    bpe = SimpleNamespace(encode=lambda text: [ord(c) % V for c in text])
    tok = SimpleNamespace(eos_token_id=None, chat_template=None, bpe=bpe)
    engine = NativeEngine("tiny", torch_model=native_model(), tokenizer=tok, quant="int8")
    try:
        assert engine.model.quant == "int8"
        ref = quantize_for_inference(native_model(), "int8", calibration_ids(bpe, None))
        jobs = [([1, 2, 3, 4, 5], 10), ([7, 8, 9], 10), ([11] * 20, 10)]
        got = tokens(run_concurrently(engine, jobs))
        assert got == [greedy_alone(ref, prompt, n) for prompt, n in jobs]
    finally:
        engine.close()
    with pytest.raises(UserError, match="base model only"):
        NativeEngine("tiny", torch_model=native_model(), tokenizer=tok, quant="int8",
                     adapters={"a": "nowhere"}, start=False)
