# %% [markdown]
# # A whole GPT forward pass by hand
#
# Token ids in, a loss out. With $B$ sequences of $T$ tokens, width $d$ and vocabulary $V$:
#
# $$x = W_{te}[\text{ids}] + W_{pe}[0..T) \quad (B, T, d)$$
# $$\text{for each of the } n_\text{layer} \text{ blocks:}\quad
#   x \leftarrow x + \mathrm{Attn}(\mathrm{Norm}_1(x)),\quad
#   x \leftarrow x + \mathrm{MLP}(\mathrm{Norm}_2(x))$$
# $$z = \mathrm{Norm}_f(x)\, W_{te}^\top \quad (B, T, V), \qquad
#   L = \frac{1}{BT}\sum_{b,t} \left(\log \sum_j e^{z_{btj}} - z_{bt,y_{bt}}\right)$$
#
# The output head reuses the token embedding $W_{te}$ (*tied* weights): the logit of token $j$
# is the dot product of the final hidden state with $j$'s embedding. A Llama-style model
# adds no position vectors; it rotates queries and keys inside attention instead (RoPE). We
# write every step with NumPy, print the shapes, and check logits and loss against the
# package's `GPT(cfg, params).forward(ids, targets)`: in float64 they agree to $10^{-12}$.
# Then the same code runs a real model, SmolLM2-135M.

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.params import init_params
from llm_deeper.pretrained import models

from _common import QUICK, check

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The pieces
# The functions of `00_primers/06_transformer_block.py`, each taking the config and the
# parameter dict by the package's names (`h.0.attn.wq`, `h.0.norm1.weight`, ...; params.py):
# the norm (LayerNorm or RMSNorm), the MLP (GELU or SwiGLU), and multi-head attention with
# grouped key/value heads, which gains an optional RoPE rotation of each query and key head
# (section 3).

# %%
def linear(x, W, b=None):
    return x @ W.T if b is None else x @ W.T + b


def norm(cfg, p, name, x):
    w = p[name + ".weight"]
    if cfg.norm == "rmsnorm":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.norm_eps) * w + p.get(name + ".bias", 0.0)


def mlp(cfg, p, pre, x):
    if cfg.activation == "swiglu":
        g = linear(x, p[pre + "w1"])
        return linear(g / (1 + np.exp(-g)) * linear(x, p[pre + "w3"]), p[pre + "w2"])
    a = linear(x, p[pre + "w1"], p.get(pre + "b1"))
    gelu = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
    return linear(gelu, p[pre + "w2"], p.get(pre + "b2"))


def rope(v, cos, sin):
    """Rotate feature i with feature i + hd/2 by the position's angle (v: (..., T, hd))."""
    half = v.shape[-1] // 2
    v1, v2 = v[..., :half], v[..., half:]
    return np.concatenate([v1 * cos - v2 * sin, v2 * cos + v1 * sin], axis=-1)


def rope_tables(cfg, T):
    """cos and sin (T, head_dim/2) of the angles position x theta^(-2i/head_dim)."""
    hd = cfg.head_dim
    # in float32, as the package and HF transformers compute them (section 3)
    inv_freq = 1.0 / np.float32(cfg.rope_theta) ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    ang = np.arange(T, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(ang), np.sin(ang)


def attention(cfg, p, pre, x, cos_sin=None):
    T, H, KV, hd = x.shape[1], cfg.n_head, cfg.n_kv_head, cfg.head_dim
    Q = linear(x, p[pre + "wq"], p.get(pre + "bq"))
    K = linear(x, p[pre + "wk"], p.get(pre + "bk"))
    V = linear(x, p[pre + "wv"], p.get(pre + "bv"))
    mask = np.tril(np.ones((T, T), dtype=bool))
    heads = []
    for h in range(H):
        g = h // (H // KV)  # the key/value head of query head h
        q, k = Q[..., h * hd:(h + 1) * hd], K[..., g * hd:(g + 1) * hd]
        if cos_sin is not None:
            q, k = rope(q, *cos_sin), rope(k, *cos_sin)
        S = np.where(mask, q @ k.swapaxes(-1, -2) / np.sqrt(hd), -np.inf)
        P = np.exp(S - S.max(-1, keepdims=True))
        heads.append(P / P.sum(-1, keepdims=True) @ V[..., g * hd:(g + 1) * hd])
    return linear(np.concatenate(heads, -1), p[pre + "wo"], p.get(pre + "bo"))


# %% [markdown]
# ## 2. The forward pass, step by step
# A GPT-2-style model first: learned positions, LayerNorm, GELU, biases, tied head. The
# targets are the inputs shifted by one token: at every position the model predicts the next.

# %%
def forward(cfg, p, ids, targets=None, show=False):
    say = print if show else (lambda *a, **k: None)
    B, T = ids.shape
    say(f"ids {ids.shape}")
    x = p["wte"][ids]
    say(f"token embeddings wte[ids]: wte {p['wte'].shape} -> x {x.shape}")
    cos_sin = None
    if cfg.position == "learned":
        x = x + p["wpe"][:T]
        say(f"+ learned positions wpe[:T] {p['wpe'][:T].shape} -> x {x.shape}")
    elif cfg.position == "rope":
        cos, sin = rope_tables(cfg, T)
        cos_sin = (cos.astype(x.dtype), sin.astype(x.dtype))
        say(f"RoPE tables cos, sin {cos.shape} (applied to q and k inside attention)")
    elif cfg.position != "none":
        raise NotImplementedError(f"{cfg.position} positions are not written here")
    for i in range(cfg.n_layer):
        pre = f"h.{i}."
        x = x + attention(cfg, p, pre + "attn.", norm(cfg, p, pre + "norm1", x), cos_sin)
        x = x + mlp(cfg, p, pre + "ffn.", norm(cfg, p, pre + "norm2", x))
        if i < 2 or i == cfg.n_layer - 1:
            say(f"block {i}: x + attn(norm1(x)), then x + mlp(norm2(x)) -> x {x.shape}")
        elif i == 2:
            say("...")
    h = norm(cfg, p, "norm_f", x)
    W_head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
    logits = h @ W_head.T
    head = "tied: wte" if cfg.tie_embeddings else "lm_head"
    say(f"final norm {h.shape} @ head^T {W_head.T.shape} ({head}) -> logits {logits.shape}")
    if targets is None:
        return logits, None
    zmax = logits.max(-1, keepdims=True)
    logsumexp = np.log(np.exp(logits - zmax).sum(-1)) + zmax[..., 0]  # (B, T)
    z_target = np.take_along_axis(logits, targets[..., None], -1)[..., 0]  # (B, T)
    loss = float(np.mean(logsumexp - z_target))
    say(f"cross-entropy: logsumexp {logsumexp.shape} - logit of the target {z_target.shape}, "
        f"mean -> loss {loss:.6f}")
    return logits, loss


cfg = ModelConfig(vocab_size=50, context_length=16, n_layer=2, n_head=4, d_model=32,
                  norm="layernorm", activation="gelu", position="learned", bias=True)
tokens = rng.integers(0, cfg.vocab_size, size=(2, 13))
ids, targets = tokens[:, :-1], tokens[:, 1:]


def by_hand_and_by_the_package(name, cfg, seed):
    """Random float64 weights; the forward pass above, shapes printed, against GPT.forward."""
    params = init_params(cfg, seed=seed, dtype=np.float64)
    for k in params:  # gains start at 1 and biases at 0: perturb them so that every one counts
        if params[k].ndim == 1:
            params[k] = params[k] + 0.1 * rng.normal(size=params[k].shape)
    print(f"{name}: {cfg.n_params():,} parameters, {cfg.n_layer} blocks")
    logits, loss = forward(cfg, params, ids, targets, show=True)
    ref_logits, ref_loss = GPT(cfg, params).forward(ids, targets)
    print(f"loss by hand {loss:.12f}, GPT.forward {ref_loss:.12f}; largest logit difference "
          f"{np.abs(logits - ref_logits).max():.1e}")
    check(f"{name}: logits by hand = GPT.forward (float64, 1e-12)",
          np.allclose(logits, ref_logits, rtol=0, atol=1e-12))
    check(f"{name}: loss by hand = GPT.forward", abs(loss - ref_loss) < 1e-12)
    return params, logits, loss


params, logits, loss = by_hand_and_by_the_package("GPT-2-style", cfg, seed=0)
print(f"an untrained model is nearly uniform: loss {loss:.4f}, "
      f"ln V = {np.log(cfg.vocab_size):.4f}")
check("at initialisation the loss is close to ln V", abs(loss - np.log(cfg.vocab_size)) < 0.05)

# %% [markdown]
# ## 3. RoPE, and a Llama-style model
# Llama adds nothing to the embeddings. Inside attention, each query and key head is split into
# pairs of features $(v_i, v_{i + d_\text{head}/2})$, and the pair at position $m$ is rotated by
# the angle $m\,\theta^{-2i/d_\text{head}}$ ($\theta$ = `rope_theta`). Rotating both $q_m$ and
# $k_n$ makes their dot product depend on $m - n$ only
# (`01_foundations/02_positional_encodings.py`).
# The angles are computed in float32, as HF transformers computes them, so that a real model's
# logits agree with it as closely as possible; we do the same. Then RMSNorm, SwiGLU, and
# grouped-query attention (2 key/value heads for 4 query heads).

# %%
cos, sin = rope_tables(cfg.replace(position="rope"), 8)
v = rng.normal(size=(8, cfg.head_dim))
check("RoPE is a rotation: it keeps every vector's length",
      np.allclose(np.linalg.norm(rope(v, cos, sin), axis=-1), np.linalg.norm(v, axis=-1)))
check("position 0 is not rotated", np.array_equal(rope(v, cos, sin)[0], v[0]))

llama = ModelConfig(vocab_size=50, context_length=16, n_layer=2, n_head=4, n_kv_head=2,
                    d_model=32, d_ff=64, norm="rmsnorm", activation="swiglu", position="rope")
params, logits, loss = by_hand_and_by_the_package("Llama-style", llama, seed=1)
no_rope, _ = forward(llama.replace(position="none"), params, ids)
check("without RoPE the logits differ (the positions matter)",
      not np.allclose(no_rope, logits, atol=1e-6))

# %% [markdown]
# ## 4. A real model: SmolLM2-135M
# SmolLM2 is a Llama: 30 blocks, width 576, 9 query heads sharing 3 key/value heads, tied
# head, 49,152 tokens. The same `forward`, on its weights (float32, as they are stored), for
# three tokens, gives the package's logits: float32 keeps about 7 digits, so they agree to a
# few millionths of their size (we check 1e-4) rather than 1e-12. Needs the weights:
# `llm-deeper models pull smollm2-135m`; skipped without them, and in quick mode (reading and
# dequantizing the 135M weights takes several seconds on 2 cores).

# %%
if QUICK:
    print("quick mode: skipping section 4 (SmolLM2)")
elif models.is_cached("smollm2-135m"):
    from llm_deeper.pretrained.weights import load_gguf

    pre = load_gguf(models.gguf_file("smollm2-135m"))
    c = pre.config
    print(f"SmolLM2: n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head}, "
          f"n_kv_head {c.n_kv_head}, d_ff {c.d_ff}, vocab {c.vocab_size}, "
          f"rope_theta {c.rope_theta:g}, tied {c.tie_embeddings}")
    tokens = np.array([pre.tokenizer.encode("To be, or not to be")[:4]])
    ids, targets = tokens[:, :3], tokens[:, 1:]
    print("tokens:", [pre.tokenizer.decode([i]) for i in tokens[0]])
    logits, loss = forward(c, pre.params, ids, targets, show=True)
    ref_logits, ref_loss = GPT(c, pre.params).forward(ids, targets)
    err = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    print(f"largest logit difference / largest logit: {err:.1e}; loss by hand {loss:.5f}, "
          f"GPT.forward {ref_loss:.5f}")
    check("SmolLM2: logits by hand = GPT.forward (float32)", err < 1e-4)
    check("SmolLM2: loss by hand = GPT.forward", abs(loss - ref_loss) < 1e-3)
    check("SmolLM2: the same most likely next token at every position",
          np.array_equal(logits.argmax(-1), ref_logits.argmax(-1)))
    top = np.argsort(logits[0, -1])[::-1][:5]
    print("most likely after 3 tokens:", [pre.tokenizer.decode([i]) for i in top])
else:
    print("SmolLM2 not cached ('llm-deeper models pull smollm2-135m'): skipping section 4")

# %% [markdown]
# ## Exercises
# 1. Count the GPT-2-style model's parameters by hand: token and position tables, then per block
#    attention ($4d^2 + 4d$), MLP ($2 d\,d_{ff} + d_{ff} + d$) and two LayerNorms ($4d$), then the
#    final norm. Compare with the printed count (answer: 1,600 + 512 + 2 x 12,704 + 64 = 27,584).
# 2. Set `n_layer=4` in `cfg` and predict the new count and the loss at initialisation before
#    running (answer: 27,584 + 2 x 12,704 = 52,992 parameters; the loss stays close to
#    ln 50 = 3.912, and its check still passes: depth does not change an untrained model's
#    near-uniform guess).
# 3. Give the Llama-style model its own output head: `tie_embeddings=False` in `llama`. Which
#    line of `forward` picks the head, and how many parameters does it add? (The `W_head = ...`
#    line takes `lm_head`; 50 x 32 = 1,600 more, and the comparison with `GPT.forward` still
#    holds to 1e-12.)
