"""The NumPy engine's hand-written backward passes against PyTorch autograd, in float64.

Each layer alone, then the whole model over norm x activation x position x attention, then
a few targeted models (interleaved RoPE, ALiBi). MLA has its own file (test_numpy_mla.py).
Criterion: max |ours - autograd| / max |autograd| <= 1e-6 for every parameter and input.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine import attention, ffn, linear, loss, norms, positions
from llm_deeper.numpy_engine.embedding import embedding_backward, embedding_forward
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.model import forward
from llm_deeper.torch_engine.positions import apply_rope

from conftest import rel_err

TOL = 1e-6
rng = np.random.default_rng(0)


def t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_backward(kind):
    x, w, b = rng.normal(size=(3, 5, 8)), rng.normal(size=8), rng.normal(size=8)
    dy = rng.normal(size=(3, 5, 8))
    fwd, bwd = norms.NORMS[kind]
    y, cache = fwd(x, w, b if kind == "layernorm" else None, 1e-5)
    dx, dw, db = bwd(dy, cache)
    tx, tw, tb = t(x), t(w), t(b)
    if kind == "layernorm":
        ty = F.layer_norm(tx, (8,), tw, tb, 1e-5)
    else:
        ty = tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + 1e-5) * tw
    ty.backward(torch.tensor(dy))
    assert rel_err(y, ty.detach()) < TOL
    assert rel_err(dx, tx.grad) < TOL and rel_err(dw, tw.grad) < TOL
    if kind == "layernorm":
        assert rel_err(db, tb.grad) < TOL


@pytest.mark.parametrize("act", ["gelu", "relu", "silu"])
def test_activation_backward(act):
    a, dy = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    fwd, bwd = ffn.ACT[act]
    y, cache = fwd(a)
    ta = t(a)
    ref = {"gelu": lambda z: F.gelu(z, approximate="tanh"), "relu": F.relu, "silu": F.silu}[act]
    ty = ref(ta)
    ty.backward(torch.tensor(dy))
    assert rel_err(y, ty.detach()) < TOL and rel_err(bwd(dy, cache), ta.grad) < TOL


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_rope_backward_is_inverse_rotation(pairing):
    x, dy = rng.normal(size=(2, 3, 6, 8)), rng.normal(size=(2, 3, 6, 8))
    cos, sin = positions.rope_cos_sin(np.arange(6), 8, 10000.0, np.float64)
    tx = t(x)
    ty = apply_rope(tx, torch.tensor(cos), torch.tensor(sin), pairing)
    ty.backward(torch.tensor(dy))
    assert rel_err(positions.rope_forward(x, cos, sin, pairing), ty.detach()) < TOL
    assert rel_err(positions.rope_backward(dy, cos, sin, pairing), tx.grad) < TOL


def test_linear_with_lora_backward():
    x, w, b = rng.normal(size=(2, 3, 6)), rng.normal(size=(5, 6)), rng.normal(size=5)
    A, B, dy = rng.normal(size=(2, 6)), rng.normal(size=(5, 2)), rng.normal(size=(2, 3, 5))
    y, cache = linear.linear_forward(x, w, b, (A, B, 0.5))
    dx, dw, db, (dA, dB) = linear.linear_backward(dy, cache)
    tx, tw, tb, tA, tB = map(t, (x, w, b, A, B))
    ty = F.linear(tx, tw, tb) + 0.5 * F.linear(F.linear(tx, tA), tB)
    ty.backward(torch.tensor(dy))
    for ours, ref in [(y, ty.detach()), (dx, tx.grad), (dw, tw.grad), (db, tb.grad),
                      (dA, tA.grad), (dB, tB.grad)]:
        assert rel_err(ours, ref) < TOL


def test_embedding_and_cross_entropy_backward():
    table, ids = rng.normal(size=(7, 4)), rng.integers(0, 7, size=(3, 5))
    dy = rng.normal(size=(3, 5, 4))
    ttable = t(table)
    ttable[torch.tensor(ids)].backward(torch.tensor(dy))
    x, _ = embedding_forward(ids, table)
    assert rel_err(embedding_backward(dy, ids, 7), ttable.grad) < TOL
    logits, targets = rng.normal(size=(3, 5, 7)), rng.integers(0, 7, size=(3, 5))
    targets[1, 2] = loss.IGNORE
    value, cache = loss.cross_entropy_forward(logits, targets)
    tl = t(logits)
    tv = F.cross_entropy(tl.reshape(-1, 7), torch.tensor(targets).reshape(-1), ignore_index=-100)
    tv.backward()
    assert abs(value - tv.item()) < 1e-12
    assert rel_err(loss.cross_entropy_backward(cache), tl.grad) < TOL


POSITIONS = {"none": dict(position="none"), "rope": dict(position="rope"),
             "interleaved": dict(position="rope", rope_pairing="interleaved"),
             "alibi": dict(position="alibi")}


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("pos", POSITIONS)
def test_attention_backward(n_kv_head, pos):
    from llm_deeper.torch_engine.attention import attention as torch_attention

    cfg = ModelConfig(vocab_size=10, context_length=6, n_layer=1, n_head=4, n_kv_head=n_kv_head,
                      d_model=16, **POSITIONS[pos])
    shapes = {"wq": (16, 16), "wk": (4 * n_kv_head, 16), "wv": (4 * n_kv_head, 16), "wo": (16, 16)}
    p = {"a." + k: rng.normal(size=s) * 0.3 for k, s in shapes.items()}
    x, dy = rng.normal(size=(2, 6, 16)), rng.normal(size=(2, 6, 16))
    rope = cfg.position == "rope"
    table = positions.rope_cos_sin(np.arange(6), 4, 10000.0, np.float64) if rope else None
    y, cache = attention.attention_forward(cfg, x, p, "a.", rope=table)
    grads = {}
    dx = attention.attention_backward(dy, cache, grads)
    tp = {k: t(v) for k, v in p.items()}
    tx = t(x)
    trope = tuple(map(torch.tensor, table)) if rope else None
    ty = torch_attention(cfg, tx, tp, "a.", 0, StepContext(rope=trope, use_sdpa=False))
    ty.backward(torch.tensor(dy))
    assert rel_err(y, ty.detach()) < TOL
    assert rel_err(dx, tx.grad) < TOL
    for k in p:
        assert rel_err(grads[k], tp[k].grad) < TOL, k


def test_dropout_backward_uses_the_same_mask():
    from llm_deeper.numpy_engine.dropout import dropout_backward, dropout_forward

    x, dy = rng.normal(size=(50, 40)), rng.normal(size=(50, 40))
    y, mask = dropout_forward(x, 0.25, np.random.default_rng(1))
    assert abs((mask == 0).mean() - 0.25) < 0.03
    tx = t(x)
    (tx * torch.tensor(mask)).backward(torch.tensor(dy))
    assert rel_err(dropout_backward(dy, mask), tx.grad) < TOL


COMBOS = list(itertools.product(["layernorm", "rmsnorm"], ["gelu", "relu", "swiglu"],
                                ["learned", "sinusoidal", "rope", "none"], [4, 2, 1]))


def check_model_against_autograd(cfg, seed):
    """loss and every parameter's gradient of the NumPy GPT against the torch engine's forward
    under autograd, float64."""
    model = GPT(cfg, seed=seed, dtype=np.float64)
    r = np.random.default_rng(seed)
    ids = r.integers(0, cfg.vocab_size, size=(2, cfg.context_length))
    targets = r.integers(0, cfg.vocab_size, size=(2, cfg.context_length))
    targets[0, :3] = loss.IGNORE
    value, grads = model.loss_and_grads(ids, targets)
    tp = {k: t(v) for k, v in model.params.items()}
    _, tl = forward(tp, cfg, torch.tensor(ids), torch.tensor(targets))
    tl.backward()
    assert abs(value - tl.item()) < 1e-10
    assert set(grads) == set(tp)
    for k in tp:
        assert rel_err(grads[k], tp[k].grad) < TOL, k


@pytest.mark.parametrize("norm,act,pos,kv", COMBOS)
def test_model_gradients_match_autograd(norm, act, pos, kv):
    variant = COMBOS.index((norm, act, pos, kv))
    cfg = ModelConfig(vocab_size=13, context_length=8, n_layer=2, n_head=4, n_kv_head=kv,
                      d_model=16, d_ff=24, norm=norm, activation=act, position=pos,
                      bias=variant % 2 == 1, tie_embeddings=variant % 3 != 2)
    check_model_against_autograd(cfg, variant)


TARGETED = {  # position schemes outside the grid, each on a model it is used with
    "interleaved-rope-llama": dict(norm="rmsnorm", activation="swiglu", position="rope",
                                   rope_pairing="interleaved", n_kv_head=2),
    "interleaved-rope-gpt2": dict(position="rope", rope_pairing="interleaved", bias=True),
    "alibi-gqa": dict(position="alibi", n_kv_head=2, norm="rmsnorm", activation="swiglu"),
    # 6 heads: slopes that are not powers of two
    "alibi-mha-6-heads": dict(position="alibi", n_head=6, d_model=24, bias=True),
}


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_model_gradients_match_autograd(name):
    kw = {**dict(vocab_size=13, context_length=8, n_layer=2, n_head=4, d_model=16, d_ff=24),
          **TARGETED[name]}
    check_model_against_autograd(ModelConfig(**kw), 100 + list(TARGETED).index(name))


def test_sdpa_path_equals_explicit_path():
    cfg = ModelConfig(vocab_size=13, context_length=8, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=16, position="rope", norm="rmsnorm", activation="swiglu")
    model = GPT(cfg, seed=3, dtype=np.float64)
    tp = {k: torch.tensor(v) for k, v in model.params.items()}
    ids = torch.randint(0, 13, (2, 8))
    a, _ = forward(tp, cfg, ids, ctx=StepContext(use_sdpa=False))
    b, _ = forward(tp, cfg, ids, ctx=StepContext(use_sdpa=True))
    assert rel_err(a, b) < 1e-10


def test_whole_model_by_finite_differences_without_torch():
    """Central differences, float64, on a small model: an oracle that needs only NumPy."""
    cfg = ModelConfig(vocab_size=7, context_length=5, n_layer=1, n_head=2, n_kv_head=1,
                      d_model=8, d_ff=12, norm="rmsnorm", activation="swiglu", position="rope",
                      tie_embeddings=False)
    model = GPT(cfg, seed=5, dtype=np.float64)
    for p in model.params.values():
        p *= 10  # larger weights: gradients well above the differencing noise
    r = np.random.default_rng(2)
    ids, targets = r.integers(0, 7, size=(2, 5)), r.integers(0, 7, size=(2, 5))
    _, grads = model.loss_and_grads(ids, targets)
    eps = 1e-6
    for name, p in model.params.items():
        num = np.zeros_like(p)
        for i in range(p.size):
            old = p.flat[i]
            p.flat[i] = old + eps
            lp = model.forward(ids, targets)[1]
            p.flat[i] = old - eps
            lm = model.forward(ids, targets)[1]
            p.flat[i] = old
            num.flat[i] = (lp - lm) / (2 * eps)
        assert rel_err(grads[name], num) < 1e-6, name
