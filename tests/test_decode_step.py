"""The fast decode step (torch_engine/decode.py) against the model's own forward pass: the same
logits step by step for every config it supports, the same greedy tokens on SmolLM2, and the
configs it does not support taking the forward pass instead."""

import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.torch_engine.decode import DecodeStep
from llm_deeper.torch_engine.generate import greedy_batch, next_logits_fn, prefill
from llm_deeper.torch_engine.model import KVCache, TorchGPT

from conftest import rel_err, smollm2_or_skip

BASE = dict(vocab_size=23, context_length=32, n_layer=2, n_head=4, d_model=32, d_ff=48)
CONFIGS = {
    "gqa-rope-rmsnorm-swiglu": dict(n_kv_head=2, position="rope", norm="rmsnorm",
                                    activation="swiglu"),
    "mha-interleaved-layernorm-gelu-bias": dict(n_kv_head=4, position="rope",
                                                rope_pairing="interleaved", norm="layernorm",
                                                activation="gelu", bias=True),
    "mqa-learned-relu": dict(n_kv_head=1, position="learned", norm="layernorm",
                             activation="relu", bias=True),
    "gqa-none-swiglu-bias": dict(n_kv_head=2, position="none", activation="swiglu", bias=True),
}


def randomized(cfg, seed=0):
    """A model whose biases and norm weights are not the init's zeros and ones, so a step
    that dropped one would show."""
    model = TorchGPT(cfg, seed=seed, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or name.endswith("weight") or ".b" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_decode_step_equals_forward(name):
    cfg = ModelConfig(**{**BASE, **CONFIGS[name]})
    model = randomized(cfg)
    step = DecodeStep(model)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (2, 5), generator=g)
    fast, ref = (KVCache(cfg, 2, 20, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        prefill(model, prompt, fast)
        model(prompt, cache=ref)
        for _ in range(12):
            tokens = torch.randint(0, cfg.vocab_size, (2,), generator=g)
            a = step(tokens, fast)
            b = model(tokens[:, None], cache=ref)[0][:, -1]
            assert a.shape == (2, cfg.vocab_size) and fast.pos == ref.pos
            assert rel_err(a, b) < 1e-12, name


def test_greedy_fast_equals_forward_and_unsupported_configs_fall_back():
    for kw in (CONFIGS["gqa-rope-rmsnorm-swiglu"], dict(n_kv_head=2, position="alibi"),
               dict(n_kv_head=2, position="sinusoidal")):
        cfg = ModelConfig(**{**BASE, **kw})
        model = randomized(cfg, seed=3)
        g = torch.Generator().manual_seed(2)
        prompt = torch.randint(0, cfg.vocab_size, (3, 4), generator=g)
        fast, slow = greedy_batch(model, prompt, 10), greedy_batch(model, prompt, 10, fast=False)
        assert torch.equal(fast, slow)
        assert DecodeStep.supports(cfg) == (kw["position"] == "rope")
    with pytest.raises(ValueError, match="model.forward"):
        DecodeStep(TorchGPT(ModelConfig(**{**BASE, "position": "alibi"})).eval())
    with pytest.raises(ValueError, match="eval"):
        DecodeStep(TorchGPT(ModelConfig(**BASE)))


def test_full_cache_is_refused():
    cfg = ModelConfig(**BASE)
    model = TorchGPT(cfg).eval()
    cache = KVCache(cfg, 1, 3)
    step = DecodeStep(model)
    for _ in range(3):
        step(torch.tensor([1]), cache)
    with pytest.raises(ValueError, match="3 positions"):
        step(torch.tensor([1]), cache)


def test_smollm2_fast_decode_matches_forward():
    """Float32 on the real model: logits within 1e-5 of the forward pass relative to their
    largest magnitude (float32 sums in another order), greedy tokens identical."""
    from llm_deeper.pretrained.weights import load_gguf

    pre = load_gguf(smollm2_or_skip())
    model = TorchGPT(pre.config, pre.params).eval().fuse_for_inference()
    ids = torch.tensor([pre.tokenizer.encode("<|im_start|>user\nName three colours.<|im_end|>\n"
                                             "<|im_start|>assistant\n")])
    fast, slow = greedy_batch(model, ids, 24), greedy_batch(model, ids, 24, fast=False)
    assert torch.equal(fast, slow)
    step = DecodeStep(model)
    a_cache, b_cache = (KVCache(pre.config, 1, 64) for _ in range(2))
    with torch.inference_mode():
        prefill(model, ids, a_cache)
        prefill(model, ids, b_cache)
        for t in fast[0, :8]:
            a = step(t[None], a_cache)
            b = model(t[None, None], cache=b_cache)[0][:, -1]
            assert rel_err(a, b) < 1e-5
    # the chat path: next_logits_fn prefills, then decodes with the fast step
    fn, state = next_logits_fn(model), {}
    seq = ids[0].tolist()
    for t in fast[0, :4].tolist():
        assert int(fn(seq, state).argmax()) == t
        seq.append(t)


def test_paged_decode_steps_through_the_decode_step_equal_the_packed_forward():
    """The serving engine's decode-only steps (sequences at different positions, block tables
    scattered over a paged cache) give the packed forward pass's logits through the lean step."""
    from llm_deeper.torch_engine.paged import PagedKVCache, SeqSlice, packed_forward

    for name in ("gqa-rope-rmsnorm-swiglu", "mqa-learned-relu"):
        cfg = ModelConfig(**{**BASE, **CONFIGS[name]})
        model = randomized(cfg, seed=5).fuse_for_inference()
        step = DecodeStep(model)
        g = torch.Generator().manual_seed(4)
        lengths, tables = (3, 9, 6), ([5, 1, 7], [0, 2, 4], [3, 6, 8])
        caches = [PagedKVCache(cfg, 9, 4, dtype=torch.float64) for _ in range(2)]
        prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
        for c in caches:
            packed_forward(model, [SeqSlice(p, 0, t) for p, t in zip(prompts, tables)], c)
        pos = list(lengths)
        for _ in range(3):
            new = torch.randint(0, cfg.vocab_size, (3,), generator=g).tolist()
            seqs = [SeqSlice([t], p, tab) for t, p, tab in zip(new, pos, tables)]
            a = packed_forward(model, seqs, caches[0], decode_step=step)
            b = packed_forward(model, seqs, caches[1])
            assert rel_err(a, b) < 1e-12, name
            pos = [p + 1 for p in pos]
        assert torch.equal(caches[0].k, caches[1].k) or rel_err(caches[0].k, caches[1].k) < 1e-12
