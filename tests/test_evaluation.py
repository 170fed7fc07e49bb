"""Sliding-window perplexity: weights windows by their new tokens, equals the direct computation
when stride = window, and drops with more context."""

import math

import numpy as np
import pytest

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.evaluation.perplexity import numpy_logprobs, perplexity, torch_logprobs
from llm_deeper.numpy_engine.model import GPT


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=23, context_length=16, n_layer=2, n_head=2, d_model=16,
                      position="rope", norm="rmsnorm", activation="swiglu")
    return GPT(cfg, seed=0, dtype=np.float64)


def test_stride_equal_window_is_the_direct_computation(model):
    ids = np.random.default_rng(0).integers(0, 23, 101)  # 100 targets: 6 full chunks + a short one
    lp = numpy_logprobs(model)
    r = perplexity(lp, ids, window=16)
    nll = 0.0
    for b in range(0, 101, 16):  # chunks of 16: each predicts its own tokens 1..15
        chunk = ids[b:b + 16]
        if len(chunk) > 1:
            nll -= lp(chunk).sum()
    n = sum(len(ids[b:b + 16]) - 1 for b in range(0, 101, 16) if len(ids[b:b + 16]) > 1)
    assert r.tokens == n and r.windows == 7
    assert r.nll == pytest.approx(nll / n, rel=1e-12)
    assert r.perplexity == pytest.approx(math.exp(nll / n))


def test_sliding_window_scores_every_token_once(model):
    ids = np.random.default_rng(1).integers(0, 23, 60)
    for stride in (1, 4, 15):
        r = perplexity(numpy_logprobs(model), ids, window=16, stride=stride)
        assert r.tokens == 59, stride  # every token but the first, exactly once
    # without overlap, the first token of each later window has no context and is not scored
    r = perplexity(numpy_logprobs(model), ids, window=16, stride=16)
    assert r.tokens == 59 - (r.windows - 1) == 56


def copy_model_logprobs(period: int, vocab: int, hit: float = 0.9):
    """A model for which context matters, with known log-probabilities: it predicts that the
    token `period` places back repeats (probability `hit`, the rest spread evenly), and is
    uniform when it cannot see that far back."""
    def fn(ids):
        out = []
        for t in range(1, len(ids)):
            if t >= period:
                p = hit if ids[t] == ids[t - period] else (1 - hit) / (vocab - 1)
            else:
                p = 1 / vocab
            out.append(math.log(p))
        return np.array(out)
    return fn


def test_perplexity_drops_with_more_context():
    """A periodic text (period 12) under a model that copies from 12 tokens back: with stride =
    window = 16, the first 12 tokens of every window are guessed blind; with stride 4 every token
    but the text's first 12 sees 12 tokens back. Perplexity must drop, to what the formula
    gives."""
    vocab, period = 20, 12
    ids = np.tile(np.random.default_rng(4).permutation(vocab)[:period], 10)  # 120 tokens
    lp = copy_model_logprobs(period, vocab)
    blind = perplexity(lp, ids, window=16, stride=16)
    sliding = perplexity(lp, ids, window=16, stride=4)
    assert sliding.perplexity < blind.perplexity / 3
    # stride 4: the first 11 targets have no 12-back context, the other 108 are hits
    expected = (11 * math.log(vocab) - 108 * math.log(0.9)) / 119
    assert sliding.tokens == 119 and sliding.nll == pytest.approx(expected, rel=1e-12)


def test_a_window_covering_the_text_is_one_pass(model):
    ids = np.random.default_rng(2).integers(0, 23, 16)
    r = perplexity(numpy_logprobs(model), ids, window=16, stride=8)
    assert r.windows == 1 and r.tokens == 15
    assert r.nll == pytest.approx(-numpy_logprobs(model)(ids).mean())


def test_torch_and_numpy_agree(model):
    import torch

    from llm_deeper.torch_engine.model import TorchGPT

    t = TorchGPT(model.cfg, model.params, dtype=torch.float64).eval()
    ids = np.random.default_rng(3).integers(0, 23, 50)
    a = perplexity(numpy_logprobs(model), ids, 16, 8).perplexity
    b = perplexity(torch_logprobs(t), ids, 16, 8).perplexity
    assert a == pytest.approx(b, rel=1e-10)


def test_bad_stride():
    with pytest.raises(UserError, match="stride"):
        perplexity(lambda ids: np.zeros(len(ids) - 1), np.arange(10), window=4, stride=5)
