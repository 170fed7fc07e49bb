# %% [markdown]
# # A transformer block from its pieces
#
# The conclusion of the primers: one **pre-norm transformer block**, the unit a GPT stacks
# `n_layer` times, assembled from functions written here:
#
# $$x \leftarrow x + \mathrm{Attention}(\mathrm{Norm}_1(x)), \qquad
#   x \leftarrow x + \mathrm{MLP}(\mathrm{Norm}_2(x))$$
#
# The norm rescales every token vector to a standard size before each sub-layer; attention
# mixes information *between* tokens; the MLP transforms each token *on its own*; and the
# **residual** additions keep the input flowing through unchanged, so each sub-layer only adds
# a correction. Two flavours: GPT-2 (LayerNorm, GELU MLP, biases) and Llama (RMSNorm, SwiGLU,
# grouped-query attention, no biases). Each piece is checked against PyTorch, and the whole
# block against the package's GPT with one layer.

# %%
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_forward
from llm_deeper.numpy_engine.ffn import ffn_forward
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.norms import norm_forward
from llm_deeper.params import init_params

from _common import check

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)
t = torch.from_numpy  # NumPy -> torch, sharing memory

# %% [markdown]
# ## 1. The norms
# **LayerNorm** centres each token vector and divides by its standard deviation, then applies
# a learned gain $w$ and bias $b$: $y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\, w + b$.
# **RMSNorm** (Llama) skips the centring and the bias: $y = \frac{x}{\sqrt{\overline{x^2} +
# \epsilon}}\, w$. Both work over the last axis, token by token.

# %%
def layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


x = rng.normal(size=(2, 3, 8)) * 3 + 1
w, b = rng.normal(size=8), rng.normal(size=8)
check("layernorm = torch layer_norm",
      np.allclose(layernorm(x, w, b), F.layer_norm(t(x), (8,), t(w), t(b), 1e-5).numpy()))
check("rmsnorm = torch rms_norm",
      np.allclose(rmsnorm(x, w), F.rms_norm(t(x), (8,), t(w), 1e-5).numpy()))
n = layernorm(x, 1.0, 0.0)
print(f"after LayerNorm (w=1, b=0): mean {n.mean(-1).ravel()[:3]}, std {n.std(-1).ravel()[:3]}")
check("LayerNorm with w=1, b=0 gives mean 0 and std 1 per token",
      np.allclose(n.mean(-1), 0) and np.allclose(n.std(-1), 1, atol=1e-3))

# %% [markdown]
# ## 2. The MLPs
# GPT-2: $\mathrm{MLP}(x) = \mathrm{GELU}(xW_1^\top + b_1)W_2^\top + b_2$, widening to
# $d_{ff} = 4d$ and back, with GELU in its tanh form
# $\frac a2\left(1 + \tanh\left(\sqrt{2/\pi}\,(a + 0.044715\,a^3)\right)\right)$.
# Llama: **SwiGLU**, $(\mathrm{SiLU}(xW_1^\top) \odot xW_3^\top)\,W_2^\top$ with
# $\mathrm{SiLU}(a) = a\,\sigma(a)$: one projection gates the other.

# %%
def linear(x, W, b=None):
    """y = x W^T + b, W stored (out, in) as in PyTorch."""
    return x @ W.T if b is None else x @ W.T + b


def gelu(a):
    return 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))


def silu(a):
    return a / (1 + np.exp(-a))


def mlp(x, p, pre):
    if pre + "w3" in p:  # SwiGLU
        return linear(silu(linear(x, p[pre + "w1"])) * linear(x, p[pre + "w3"]), p[pre + "w2"])
    return linear(gelu(linear(x, p[pre + "w1"], p.get(pre + "b1"))), p[pre + "w2"],
                  p.get(pre + "b2"))


a = np.linspace(-5, 5, 101)
check("gelu = torch gelu(approximate='tanh')",
      np.allclose(gelu(a), F.gelu(t(a), approximate="tanh").numpy()))
check("silu = torch silu", np.allclose(silu(a), F.silu(t(a)).numpy()))

# %% [markdown]
# ## 3. Attention
# Multi-head causal attention with grouped key/value heads, as in `05_multihead_attention.py`,
# now with the optional biases of GPT-2 (`bq`, `bk`, `bv`, `bo`).

# %%
def attention(x, p, pre, n_head, n_kv_head):
    Bsz, T, d = x.shape
    hd, group = d // n_head, n_head // n_kv_head
    Q = linear(x, p[pre + "wq"], p.get(pre + "bq"))
    K = linear(x, p[pre + "wk"], p.get(pre + "bk"))
    V = linear(x, p[pre + "wv"], p.get(pre + "bv"))
    mask = np.tril(np.ones((T, T), dtype=bool))
    heads = []
    for h in range(n_head):
        g = h // group
        q, k, v = Q[..., h * hd:(h + 1) * hd], K[..., g * hd:(g + 1) * hd], \
            V[..., g * hd:(g + 1) * hd]
        S = np.where(mask, q @ k.swapaxes(-1, -2) / np.sqrt(hd), -np.inf)
        P = np.exp(S - S.max(-1, keepdims=True))
        heads.append(P / P.sum(-1, keepdims=True) @ v)
    return linear(np.concatenate(heads, -1), p[pre + "wo"], p.get(pre + "bo"))


# %% [markdown]
# ## 4. The block
# Norm, attention, add; norm, MLP, add. Shapes never change: `(B, T, d)` in, `(B, T, d)` out,
# which is what lets the model stack blocks.

# %%
def block(x, p, cfg, i=0, show=False):
    pre = f"h.{i}."
    if cfg.norm == "layernorm":
        norm = lambda v, name: layernorm(v, p[name + ".weight"], p.get(name + ".bias", 0.0),
                                         cfg.norm_eps)
    else:
        norm = lambda v, name: rmsnorm(v, p[name + ".weight"], cfg.norm_eps)
    h = norm(x, pre + "norm1")
    a = attention(h, p, pre + "attn.", cfg.n_head, cfg.n_kv_head)
    x = x + a
    h2 = norm(x, pre + "norm2")
    f = mlp(h2, p, pre + "ffn.")
    if show:
        print(f"  norm1 {h.shape} -> attention {a.shape} -> residual add -> norm2 {h2.shape} "
              f"-> MLP {f.shape} (hidden {cfg.d_ff}) -> residual add")
    return x + f


def randomise(params, rng):
    """init_params starts gains at 1 and biases at 0; perturb them so that every parameter
    matters to the comparison."""
    return {k: v + 0.1 * rng.normal(size=v.shape) if v.ndim == 1 else v
            for k, v in params.items()}


gpt2 = ModelConfig(vocab_size=20, context_length=8, n_layer=1, n_head=4, d_model=16,
                   norm="layernorm", activation="gelu", position="learned", bias=True)
llama = ModelConfig(vocab_size=20, context_length=8, n_layer=1, n_head=4, n_kv_head=2,
                    d_model=16, d_ff=40, norm="rmsnorm", activation="swiglu", position="none")
ids = rng.integers(0, 20, size=(2, 8))
for name, cfg in (("GPT-2-style", gpt2), ("Llama-style", llama)):
    p = randomise(init_params(cfg, seed=1, dtype=np.float64), rng)
    x = p["wte"][ids] + (p["wpe"][:ids.shape[1]] if cfg.position == "learned" else 0)
    print(f"{name}: x {x.shape}")
    y = block(x, p, cfg, show=True)
    # the same block from the package's layer functions
    hn, _ = norm_forward(cfg, x, p, "h.0.norm1")
    x_ref = x + attention_forward(cfg, hn, p, "h.0.attn.")[0]
    y_ref = x_ref + ffn_forward(cfg, norm_forward(cfg, x_ref, p, "h.0.norm2")[0], p, "h.0.ffn.")[0]
    print(f"  block output vs the package's layers: largest difference "
          f"{np.abs(y - y_ref).max():.1e}")
    check(f"{name}: the block = norm_forward, attention_forward, ffn_forward composed",
          np.allclose(y, y_ref, atol=1e-12))
    # and the block inside the package's GPT: embeddings -> block -> final norm -> tied head
    hf = (layernorm(y, p["norm_f.weight"], p.get("norm_f.bias", 0.0), cfg.norm_eps)
          if cfg.norm == "layernorm" else rmsnorm(y, p["norm_f.weight"], cfg.norm_eps))
    logits = hf @ p["wte"].T
    ref_logits, _ = GPT(cfg, p).forward(ids)
    print(f"  logits {logits.shape}; vs GPT(n_layer=1).forward: largest difference "
          f"{np.abs(logits - ref_logits).max():.1e}")
    check(f"{name}: embeddings + our block + final norm + head = GPT.forward's logits",
          np.allclose(logits, ref_logits, atol=1e-12))
    # parameters of one block, by formula, against the package's schema
    d, ff, kv = cfg.d_model, cfg.d_ff, cfg.n_kv_head * cfg.head_dim
    attn_n = 2 * d * d + 2 * kv * d + (2 * d + 2 * kv if cfg.bias else 0)
    mlp_n = (3 if cfg.activation == "swiglu" else 2) * d * ff + (ff + d if cfg.bias else 0)
    norm_n = 2 * d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    package_n = sum(v.size for k, v in p.items() if k.startswith("h.0."))
    print(f"  one block: attention {attn_n}, MLP {mlp_n}, norms {norm_n} = "
          f"{attn_n + mlp_n + norm_n} parameters")
    check(f"{name}: the parameter formula = the package's block", attn_n + mlp_n + norm_n
          == package_n)

# %% [markdown]
# ## 5. The residual stream
# The running `x` that flows from the embeddings through every block to the head is the
# **residual stream**; each sub-layer reads a normalised copy of it and adds its output back.
# If both sub-layers output zero (zero output projections `wo` and `w2` and their biases), the
# block passes its input through untouched. (GPT-2's initialisation scales `wo` and `w2` down
# by $1/\sqrt{2\,n_\text{layer}}$ so that the corrections start small in a deep stack.)

# %%
p = randomise(init_params(gpt2, seed=1, dtype=np.float64), rng)
p0 = {k: np.zeros_like(v) if k.split(".")[-1] in ("wo", "bo", "w2", "b2") else v
      for k, v in p.items()}
x = p["wte"][ids] + p["wpe"][:ids.shape[1]]
check("with zero output projections the block is the identity",
      np.array_equal(block(x, p0, gpt2), x))
check("with them, it is not", not np.allclose(block(x, p, gpt2), x))

# %% [markdown]
# ## Exercises
# 1. Predict the parameters of one GPT-2-style block at `d_model=32` (then `d_ff` = 4 x 32):
#    attention, MLP and norms separately. Change `d_model` in `gpt2` and rerun; section 4 prints
#    the counts and its last check compares your formula with the package (answer: attention
#    4 x 32^2 + 4 x 32 = 4,224, MLP 2 x 32 x 128 + 128 + 32 = 8,352, norms 128: 12,704).
# 2. In section 5, why must the biases `bo` and `b2` be zeroed along with `wo` and `w2`?
#    (A sub-layer's output is `... @ wo.T + bo`: with `wo` zero it still adds `bo`; zero both
#    and the check "with zero output projections the block is the identity" holds exactly.)
# 3. Remove the first residual (`x = a` instead of `x = x + a` in `block`). Which check stops the
#    lesson? (The first comparison with the package's layers: "GPT-2-style: the block =
#    norm_forward, attention_forward, ffn_forward composed".)
