"""Generation: the KV cache changes speed, never results; the sampler's filters do what they say."""

import numpy as np
import pytest

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.generate import generate, greedy_batch, stream
from llm_deeper.numpy_engine.model import GPT, KVCache
from llm_deeper.sampling import SamplingParams, StopStrings, filter_logits, sample_token
from llm_deeper.tokenizers import CharTokenizer

from conftest import rel_err

MLA = dict(attention="mla", kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=8,
           v_head_dim=6, position="rope")
KINDS = [dict(position="learned"), dict(position="sinusoidal", n_kv_head=2),
         dict(position="rope", n_kv_head=1, norm="rmsnorm", activation="swiglu"),
         dict(position="rope", n_kv_head=4, bias=True), dict(position="none", n_kv_head=2),
         dict(position="rope", rope_pairing="interleaved", n_kv_head=2),
         dict(position="alibi", n_kv_head=2, norm="rmsnorm"),
         # MLA: the cache holds the latent c and the RoPE key k_pe (numpy_engine/mla.py)
         dict(MLA, norm="rmsnorm", activation="swiglu"),
         dict(MLA, q_lora_rank=10, rope_pairing="interleaved")]


@pytest.mark.parametrize("kw", KINDS)
def test_cached_logits_equal_uncached(kw):
    cfg = ModelConfig(vocab_size=17, context_length=24, n_layer=2, n_head=4, d_model=32, **kw)
    model = GPT(cfg, seed=1, dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, 17, size=(2, 20))
    full = model.forward(ids)[0]
    cache = KVCache(cfg, 2, dtype=np.float64)
    pieces = [model.forward(ids[:, :7], kv_cache=cache)[0]]  # prefill 7
    for t in range(7, 20):  # then one token at a time
        pieces.append(model.forward(ids[:, t:t + 1], kv_cache=cache)[0])
    assert rel_err(np.concatenate(pieces, axis=1), full) < 1e-12
    assert cache.pos == 20


@pytest.mark.parametrize("kw", [{}, dict(MLA, qk_nope_head_dim=4, v_head_dim=4)])
def test_cached_and_uncached_generation_give_the_same_tokens(kw):
    text = "abcdefgh ijklmnop qrstuvwxyz.\n" * 3
    tok = CharTokenizer.train(text)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=2, n_head=2,
                      d_model=16, **{"position": "rope", **kw})
    model = GPT(cfg, seed=4)
    for p in (SamplingParams(max_tokens=40, temperature=0),
              SamplingParams(max_tokens=40, temperature=1.0, top_k=5, seed=3)):
        a = generate(model, tok, "abc", p, use_cache=True)
        b = generate(model, tok, "abc", p, use_cache=False)
        assert a.token_ids == b.token_ids and len(a.token_ids) == 40  # runs past the context


def test_greedy_batch_equals_single_sequences():
    cfg = ModelConfig(vocab_size=9, context_length=20, n_layer=1, n_head=2, d_model=8)
    model = GPT(cfg, seed=2)
    prompts = np.random.default_rng(1).integers(0, 9, size=(3, 5))
    out = greedy_batch(model, prompts, 6)
    for b in range(3):
        seq = list(prompts[b])
        for _ in range(6):
            seq.append(int(model.forward(np.array([seq]))[0][0, -1].argmax()))
        assert list(out[b]) == seq[5:]


def test_top_k_top_p_min_p_filters():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    keep = lambda **kw: np.isfinite(filter_logits(logits, SamplingParams(**kw))).tolist()
    assert keep(top_k=2) == [True, True, False, False, False]
    assert keep(top_p=0.7) == [True, True, False, False, False]  # 0.5 < 0.7 <= 0.75
    assert keep(top_p=0.75) == [True, True, False, False, False]
    assert keep(top_p=0.76) == [True, True, True, False, False]
    assert keep(min_p=0.35) == [True, True, False, False, False]  # >= 0.35 * 0.5
    assert keep(min_p=0.1) == [True, True, True, True, False]  # >= 0.05
    assert keep(top_p=0.01) == [True, False, False, False, False]  # always keeps the best


def test_sampling_distribution_and_seed():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    p = SamplingParams(temperature=1.0, seed=0)
    rng = np.random.default_rng(0)
    draws = np.bincount([sample_token(logits, p, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.abs(draws - [0.6, 0.3, 0.1]).max() < 0.03
    assert sample_token(logits, SamplingParams(temperature=0), rng) == 0


def test_repetition_penalty():
    logits = np.array([2.0, 1.9, -1.0])
    p = SamplingParams(temperature=0, repetition_penalty=1.5)
    assert sample_token(logits, p, None, previous=[0]) == 1  # 2.0 / 1.5 < 1.9
    assert sample_token(logits, SamplingParams(temperature=0), None, previous=[0]) == 0


def test_stop_strings_never_stream_a_partial_stop():
    s = StopStrings(["END"])
    shown = []
    text = ""
    for ch in "hello EN world END more":
        text += ch
        piece, stopped = s.feed(text)
        shown.append(piece)
        if stopped:
            break
    assert "".join(shown) == "hello EN world "
    assert stopped


def test_generate_stops_at_stop_string_and_streams_the_same_text():
    tok = CharTokenizer.train("ab")
    cfg = ModelConfig(vocab_size=2, context_length=32, n_layer=1, n_head=1, d_model=4)
    model = GPT(cfg, seed=0)
    p = SamplingParams(max_tokens=30, temperature=1.0, seed=7, stop=["bb"])
    g = generate(model, tok, "a", p)
    assert "bb" not in g.text and g.finish_reason == "stop"
    assert "".join(stream(model, tok, "a", p)) == g.text


def test_bad_inputs_are_one_sentence():
    cfg = ModelConfig(vocab_size=5, context_length=8, n_layer=1, n_head=1, d_model=4)
    model = GPT(cfg)
    with pytest.raises(UserError, match="outside the vocabulary"):
        model.forward(np.array([[7]]))
    with pytest.raises(UserError, match="longer than the model's context_length"):
        model.forward(np.zeros((1, 9), dtype=int))
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=1.5)
