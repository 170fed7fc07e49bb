"""Multi-head latent attention in the NumPy engine (numpy_engine/mla.py) against the torch engine.

Gradients of every parameter (LoRA factors included) against autograd of the torch engine's
forward, float64, max relative error <= 1e-6; logits equal TorchGPT's to 1e-10; the absorbed
decode equals the naive one. Cached == uncached is in test_generate.py.

Both engines compute RoPE's angles in float32 (as HF does), each with its own libm, and their
cos/sin differ by a float32 ulp (6e-8): far above 1e-10. The NumPy model here takes the torch
engine's tables, so that what is compared is MLA itself.
"""

import numpy as np
import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine import loss
from llm_deeper.numpy_engine import model as numpy_model
from llm_deeper.numpy_engine.model import GPT, KVCache
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.model import TorchGPT, forward
from llm_deeper.torch_engine.positions import rope_cos_sin as torch_rope_cos_sin

from conftest import rel_err

TOL = 1e-6
MLA = dict(attention="mla", kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=8,
           v_head_dim=6, position="rope")
SCALE = 2.0  # LoRA's alpha / r


@pytest.fixture(autouse=True)
def torch_rope_tables(monkeypatch):
    def tables(positions, head_dim, theta, dtype=np.float32):
        cos, sin = torch_rope_cos_sin(torch.from_numpy(positions), head_dim, theta, torch.float64)
        return cos.numpy().astype(dtype), sin.numpy().astype(dtype)

    monkeypatch.setattr(numpy_model, "rope_cos_sin", tables)


def mla_model(seed: int, lora_targets=(), **kw) -> GPT:
    """A small float64 MLA model; norm gains and LoRA factors random, so every path counts."""
    base = dict(vocab_size=13, context_length=8, n_layer=2, n_head=4, d_model=16, d_ff=24,
                norm="rmsnorm", activation="swiglu")
    cfg = ModelConfig(**{**base, **MLA, **kw})
    model = GPT(cfg, seed=seed, dtype=np.float64)
    r = np.random.default_rng(seed)
    for v in model.params.values():
        if v.ndim == 1:
            v += 0.2 * r.normal(size=v.shape)
    for layer in range(cfg.n_layer):
        for target in lora_targets:
            name = f"h.{layer}.attn.{target}"
            out_f, in_f = model.params[name].shape
            model.params[name + ".lora_A"] = 0.3 * r.normal(size=(3, in_f))
            model.params[name + ".lora_B"] = 0.3 * r.normal(size=(out_f, 3))
            model.lora[name] = SCALE
    return model


def batch(cfg, seed):
    r = np.random.default_rng(seed)
    ids = r.integers(0, cfg.vocab_size, size=(2, cfg.context_length))
    targets = r.integers(0, cfg.vocab_size, size=(2, cfg.context_length))
    targets[0, :3] = loss.IGNORE
    return ids, targets


CASES = {  # (q_lora_rank, LoRA targets, other config)
    "direct-q": (0, (), {}),
    "compressed-q-interleaved": (10, (), dict(rope_pairing="interleaved")),
    "direct-q-lora": (0, ("wq", "wkv_a", "wo"), dict(norm="layernorm", activation="gelu",
                                                     bias=True)),
    "compressed-q-lora-interleaved": (10, ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo"),
                                      dict(rope_pairing="interleaved", tie_embeddings=False)),
}


@pytest.mark.parametrize("case", CASES)
def test_mla_gradients_and_logits_match_torch(case):
    """Both engines, LoRA on every MLA projection included (the torch engine folds wkv_b's
    update into the weight it splits per head: StepContext.weight)."""
    q_lora_rank, targets, kw = CASES[case]
    seed = list(CASES).index(case)
    model = mla_model(seed, targets, q_lora_rank=q_lora_rank, **kw)
    cfg = model.cfg
    ids, tgt = batch(cfg, seed)
    logits, value = model.forward(ids, tgt)
    value, grads = model.loss_and_grads(ids, tgt)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    tlogits, tl = forward(tp, cfg, torch.tensor(ids), torch.tensor(tgt),
                          StepContext(lora=dict(model.lora)))
    tl.backward()
    assert rel_err(logits, tlogits.detach()) < 1e-10
    assert abs(value - tl.item()) < 1e-10
    assert set(grads) == set(tp)
    for k in tp:
        assert rel_err(grads[k], tp[k].grad) < TOL, k
    if not targets:  # the module as users run it
        with torch.no_grad():
            ref = TorchGPT(cfg, model.params, dtype=torch.float64).eval()(torch.tensor(ids))[0]
        assert rel_err(logits, ref) < 1e-10


def test_lora_on_wkv_b_equals_the_merged_weight():
    """y = c (W + s B A)^T: logits equal those of the merged model, and the factors' gradients
    are the chain rule through the merged weight, dA = s B^T dW and dB = s dW A^T."""
    model = mla_model(7, ("wkv_b",), q_lora_rank=10)
    cfg = model.cfg
    ids, tgt = batch(cfg, 7)
    value, grads = model.loss_and_grads(ids, tgt)
    merged = GPT(cfg, {k: v.copy() for k, v in model.params.items()})
    for name in model.lora:
        A, B = model.params[name + ".lora_A"], model.params[name + ".lora_B"]
        merged.params[name] += SCALE * B @ A
    merged_value, merged_grads = merged.loss_and_grads(ids, tgt)
    assert abs(value - merged_value) < 1e-12
    for name in model.lora:
        A, B = model.params[name + ".lora_A"], model.params[name + ".lora_B"]
        dW = merged_grads[name]
        assert rel_err(grads[name + ".lora_A"], SCALE * B.T @ dW) < 1e-10
        assert rel_err(grads[name + ".lora_B"], SCALE * dW @ A.T) < 1e-10
        assert rel_err(grads[name], dW) < 1e-10  # the weight's own gradient is unchanged


@pytest.mark.parametrize("q_lora_rank,targets", [(0, ()), (10, ("wkv_b", "wq_b"))])
def test_absorbed_decode_equals_naive(q_lora_rank, targets):
    """softmax([q_C W_UK, q_R] . [c, k_R]) c W_UV^T == the per-head naive path, with a cache."""
    model = mla_model(3, targets, q_lora_rank=q_lora_rank, context_length=16)
    ids = np.random.default_rng(1).integers(0, 13, size=(2, 16))
    full = model.forward(ids)[0]  # naive, no cache
    model.mla_absorb = True
    cache = KVCache(model.cfg, 2, dtype=np.float64)
    parts = [model.forward(ids[:, :6], kv_cache=cache)[0]]
    parts += [model.forward(ids[:, t:t + 1], kv_cache=cache)[0] for t in range(6, 16)]
    assert rel_err(np.concatenate(parts, 1), full) < 1e-10
    assert rel_err(model.forward(ids)[0], full) < 1e-10  # absorbed without a cache too
    # training ignores the flag: backward needs the naive path's per-head keys and values
    _, grads = model.loss_and_grads(ids, ids)
    assert "h.0.attn.wkv_b" in grads


def test_latent_cache_holds_the_latent_only():
    """d_c + d_R numbers per token and layer, nothing per head (cfg.kv_cache_numbers_per_token)."""
    model = mla_model(0, context_length=16)
    cfg = model.cfg
    cache = KVCache(cfg, 2, dtype=np.float64)
    model.forward(np.zeros((2, 5), dtype=int), kv_cache=cache)
    assert [a.shape for a in cache.c] == [(2, 16, 12)] * 2 and cache.k == []
    assert cache.nbytes() == 5 * 2 * cfg.n_layer * (12 + 4) * 8
    mha = KVCache(ModelConfig(**{**cfg.to_dict(), **dict(attention="mha", kv_lora_rank=0)}), 2,
                  dtype=np.float64)
    mha.pos = 5
    assert mha.nbytes() == 5 * 2 * 2 * cfg.n_layer * cfg.n_head * cfg.head_dim * 8


def test_mla_trains_with_dropout():
    """The NumPy engine's MLA learns a fixed batch (AdamW, dropout on), as the torch one does."""
    from llm_deeper.numpy_engine.optim import AdamW

    model = mla_model(0, q_lora_rank=10, context_length=16, dropout=0.1, d_model=32, d_ff=48)
    x = np.random.default_rng(0).integers(0, 13, size=(4, 17))
    opt, rng = AdamW(model.params, list(model.params), lr=2e-2), np.random.default_rng(0)
    losses = []
    for _ in range(30):
        value, grads = model.loss_and_grads(x[:, :-1], x[:, 1:], rng=rng)
        opt.step(grads)
        losses.append(value)
    assert losses[-1] < 0.5 * losses[0]
