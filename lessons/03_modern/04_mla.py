# %% [markdown]
# # Multi-head latent attention: a compressed KV cache
#
# Decoding a long sequence is limited by the KV cache: every layer keeps a key and a value per
# head for every past token, and every new token reads all of them. Grouped-query attention
# (`03_gqa.py`) shares K/V heads; MLA (DeepSeek-V2, 2024) instead caches one small **latent**
# vector $c_{KV}$ per token and layer, plus one small RoPE key shared by all heads, and rebuilds
# every head's keys and values from the latent. At decode time the up-projections fold into the
# query and the output ("absorbed"), so attention runs over the latents directly.
#
# ![MLA's data flow: docs/figures/mla_dataflow.png](../../docs/figures/mla_dataflow.png)
#
# We compute every step of the figure by hand on a small model, check each against the engine
# (`torch_engine/mla.py`), then generate with the compressed cache.

# %%
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper import sizing
from llm_deeper.config import ModelConfig
from llm_deeper.figures.kv import DEEPSEEK_V2_LITE, kv_variants
from llm_deeper.params import init_params
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.generate import greedy_batch
from llm_deeper.torch_engine.mla import mla_attention
from llm_deeper.torch_engine.model import TorchGPT, make_cache
from llm_deeper.torch_engine.positions import apply_rope, rope_cos_sin, rope_table

from _common import check

# %% [markdown]
# ## What is at stake: bytes per token at real sizes
# Per token and layer, multi-head attention caches $H(d_k + d_v)$ numbers; MLA caches
# $d_c + d_R$ (the latent and the RoPE key), whatever the number of heads. DeepSeek-V2-Lite:
# $H = 16$ heads with keys of $d_n + d_R = 128 + 64$ and values of $d_v = 128$, a latent of
# $d_c = 512$. The calculator (`sizing.py`, docs/figures/kv_bytes.png) against the cache the
# engine allocates for that shape (on PyTorch's meta device: shapes, no memory):

# %%
for model_name, kind, _, _, b in kv_variants("bf16"):
    print(f"  {model_name:<17} {kind:<48} {b / 1024:7.1f} KiB per token (bf16)")
ds = DEEPSEEK_V2_LITE
ds_cfg = ModelConfig(vocab_size=ds["vocab_size"], context_length=4096, d_model=ds["hidden_size"],
                     n_layer=ds["num_hidden_layers"], n_head=ds["num_attention_heads"],
                     d_ff=ds["intermediate_size"], norm="rmsnorm", activation="swiglu",
                     position="rope", attention="mla", kv_lora_rank=ds["kv_lora_rank"],
                     qk_rope_head_dim=ds["qk_rope_head_dim"],
                     qk_nope_head_dim=ds["qk_nope_head_dim"], v_head_dim=ds["v_head_dim"])
allocated = make_cache(ds_cfg, 1, max_len=1, dtype=torch.bfloat16,
                       device="meta").nbytes_per_token()
print(f"DeepSeek-V2-Lite's latent cache as the engine allocates it: {allocated:,} bytes per token")
check("engine's latent cache = 27 layers x (512 + 64) x 2 bytes = the calculator",
      allocated == 27 * (512 + 64) * 2
      == sizing.kv_bytes(sizing.from_hf(ds, "DeepSeek-V2-Lite"), 1, 1, "bf16"))

# %% [markdown]
# ## A small MLA model
# Two layers, $H = 4$ heads, $d = 64$, $d_c = 32$, $d_R = 8$, $d_n = 16$, $d_v = 16$, in
# float64 so that two computations of the same thing agree to ~1e-12. The package initialises
# matrices with standard deviation 0.02; we scale them by 8 (0.16, about $1.3/\sqrt{d}$) so that
# the model's next token depends on its context (the last section says why that matters).

# %%
cfg = ModelConfig(vocab_size=64, context_length=128, n_layer=2, n_head=4, d_model=64, d_ff=176,
                  norm="rmsnorm", activation="swiglu", position="rope", attention="mla",
                  kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
params = {k: 8 * v if v.ndim == 2 else v for k, v in init_params(cfg, seed=0).items()}
model = TorchGPT(cfg, params, dtype=torch.float64).eval()
p, pre = model.param_dict(), "h.0.attn."
H, d_c, d_R, d_n, d_v = (cfg.n_head, cfg.kv_lora_rank, cfg.qk_rope_head_dim,
                         cfg.qk_nope_head_dim, cfg.v_head_dim)
T = 12
x = torch.randn(1, T, cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
cos, sin = (t[:T] for t in rope_table(cfg, "cpu", torch.float64))  # positions 0..T-1


def rope(v):
    return apply_rope(v, cos, sin, cfg.rope_pairing)


# the engine's attention of layer 0 on x, naive, with a latent cache we can look into
ctx = StepContext(cache=make_cache(cfg, 1, max_len=T, dtype=torch.float64), rope=(cos, sin))
with torch.no_grad():
    y_engine = mla_attention(cfg, x, p, pre, 0, ctx)
cache_c, cache_kR = ctx.cache.c[0, :, :T], ctx.cache.k_pe[0, :, :T]

# %% [markdown]
# ## Step 1: one down-projection for keys and values
# $W_{DKV}$ (`wkv_a`, shape $(d_c + d_R) \times d$) maps each token to $d_c + d_R$ numbers; the
# first $d_c$ are normalised into the latent,
# $$c_{KV} = \mathrm{RMSNorm}(x W_{DKV}^{c\,\top}) \qquad (T, d_c),$$
# the last $d_R$ become the RoPE key of step 2. This latent is what the cache holds instead of
# $H$ keys and values.

# %%
def rms_norm(v, w, eps=cfg.norm_eps):
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps) * w


ckv = x @ p[pre + "wkv_a"].T  # (1, T, d_c + d_R)
c_raw, kR_raw = ckv.split([d_c, d_R], dim=-1)
c = rms_norm(c_raw, p[pre + "kv_norm.weight"])
print(f"x {tuple(x.shape)} @ W_DKV^T {tuple(p[pre + 'wkv_a'].T.shape)} -> {tuple(ckv.shape)} "
      f"-> c {tuple(c.shape)} + RoPE key {tuple(kR_raw.shape)}")
check("c_KV by hand = the latent the engine cached (1e-12)",
      torch.allclose(c, cache_c, rtol=0, atol=1e-12))

# %% [markdown]
# ## Step 2: the decoupled RoPE key
# Positions enter through a separate small key $k_R = \mathrm{RoPE}(x W_{KR})$ of $d_R$
# numbers, **one for all heads** (it is cached too). Why not rotate the keys themselves? See
# step 5.

# %%
k_R = rope(kR_raw)  # (1, T, d_R)
check("k_R by hand = the RoPE key the engine cached (1e-12)",
      torch.allclose(k_R, cache_kR, rtol=0, atol=1e-12))

# %% [markdown]
# ## Step 3: queries, and the up-projections of keys and values
# Queries come straight from $x$ ($W_Q$, `wq`): per head a position-free part $q_C$ ($d_n$) and
# a part $q_R$ ($d_R$) that RoPE rotates. The latent is expanded per head by
# $W_{UKV}$ (`wkv_b`, $H(d_n + d_v) \times d_c$), which splits into $W_{UK}^{(h)}$
# ($d_n \times d_c$) and $W_{UV}^{(h)}$ ($d_v \times d_c$):
# $$k_C^{(h)} = W_{UK}^{(h)} c_{KV}, \qquad v^{(h)} = W_{UV}^{(h)} c_{KV}.$$

# %%
q = (x @ p[pre + "wq"].T).view(1, T, H, d_n + d_R).transpose(1, 2)  # (1, H, T, d_n + d_R)
q_C, q_R = q[..., :d_n], rope(q[..., d_n:])
W = p[pre + "wkv_b"].view(H, d_n + d_v, d_c)
W_UK, W_UV = W[:, :d_n], W[:, d_n:]  # (H, d_n, d_c), (H, d_v, d_c)
k_C = torch.einsum("hnc,btc->bhtn", W_UK, c)  # (1, H, T, d_n)
v = torch.einsum("hvc,btc->bhtv", W_UV, c)  # (1, H, T, d_v)
print(f"q_C {tuple(q_C.shape)}, q_R {tuple(q_R.shape)}, W_UK {tuple(W_UK.shape)}, "
      f"W_UV {tuple(W_UV.shape)} -> k_C {tuple(k_C.shape)}, v {tuple(v.shape)}")

# %% [markdown]
# ## Step 4: attention, as multi-head attention with a shared RoPE key
# $$s^{(h)}_{tj} = \frac{q_C^{(h)}{}_t \cdot k_C^{(h)}{}_j + q_R^{(h)}{}_t \cdot k_{R,j}}
#   {\sqrt{d_n + d_R}} \;(+\,\text{causal mask}), \qquad
#   o^{(h)} = \mathrm{softmax}(s^{(h)})\, v^{(h)}, \qquad y = [o^{(1)} \dots o^{(H)}]\, W_O^\top$$

# %%
scale = 1 / math.sqrt(d_n + d_R)
mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), diagonal=1)
scores = (q_C @ k_C.transpose(-1, -2) + q_R @ k_R[:, None].transpose(-1, -2)) * scale + mask
P = scores.softmax(-1)
o = P @ v  # (1, H, T, d_v)
y = o.transpose(1, 2).reshape(1, T, H * d_v) @ p[pre + "wo"].T
err = (y - y_engine).abs().max().item()
print(f"scores {tuple(scores.shape)}, output {tuple(y.shape)}; max |by hand - engine| = {err:.1e}")
check("steps 1-4 by hand = the engine's MLA layer (1e-12)", err < 1e-12)

# %% [markdown]
# ## Step 5: absorbing $W_{UK}$ into the query and $W_{UV}$ into the output
# A dot product lets a matrix change sides:
# $q_C \cdot (W_{UK} c) = (W_{UK}^\top q_C) \cdot c$. So each head's query is mapped once into
# the latent space, $\tilde q^{(h)} = W_{UK}^{(h)\top} q_C^{(h)}$ ($d_c$ numbers), and scored
# against the cached latents directly. Likewise $P\,(c\,W_{UV}^\top) = (P\,c)\,W_{UV}^\top$:
# attend over the latents, then up-project once per query. No $k_C$ or $v$ of a past token is
# ever built: attention runs as **one shared key/value head** of $d_c + d_R$ numbers (MQA over
# the latents), which is what a decode step reads from memory.
#
# This is why RoPE needs its own key: rotating $k_C$ by its position $j$ puts a rotation $R_j$
# between $W_{UK}$ and $c$, and $q \cdot R_j W_{UK} c_j = (W_{UK}^\top R_j^\top q) \cdot c_j$
# needs a different absorbed query for every key position $j$.

# %%
q_lat = torch.einsum("bhtn,hnc->bhtc", q_C, W_UK)  # (1, H, T, d_c): W_UK^T q_C
scores_abs = (q_lat @ c[:, None].transpose(-1, -2)
              + q_R @ k_R[:, None].transpose(-1, -2)) * scale + mask
o_abs = torch.einsum("bhtc,hvc->bhtv", scores_abs.softmax(-1) @ c[:, None], W_UV)
y_abs = o_abs.transpose(1, 2).reshape(1, T, H * d_v) @ p[pre + "wo"].T
score_gap = (scores_abs - scores).nan_to_num(0).abs().max()  # -inf - -inf (masked) is nan
print(f"absorbed query {tuple(q_lat.shape)}; max |absorbed - naive| scores {score_gap:.1e}, "
      f"outputs {(y_abs - y).abs().max():.1e}")
check("absorbed scores and outputs = naive (1e-12)",
      score_gap < 1e-12 and torch.allclose(y_abs, y, rtol=0, atol=1e-12))
ctx_abs = StepContext(mla_absorb=True, rope=(cos, sin))
with torch.no_grad():
    y_engine_abs = mla_attention(cfg, x, p, pre, 0, ctx_abs)
check("absorbed by hand = the engine's absorbed path (1e-12)",
      torch.allclose(y_abs, y_engine_abs, rtol=0, atol=1e-12))

# RoPE on k_C instead (rotating all d_n features of queries and keys, as plain RoPE would):
cos_n, sin_n = rope_cos_sin(torch.arange(T), d_n, cfg.rope_theta, torch.float64)
q_rot = apply_rope(q_C, cos_n, sin_n, cfg.rope_pairing)
coupled = q_rot @ apply_rope(k_C, cos_n, sin_n, cfg.rope_pairing).transpose(-1, -2)
one_query = torch.einsum("bhtn,hnc->bhtc", q_rot, W_UK) @ c[:, None].transpose(-1, -2)
gap = (coupled - one_query)[..., 1:].abs().max().item()  # keys at positions 1..T-1
gap0 = (coupled - one_query)[..., 0].abs().max().item()
print(f"RoPE on k_C: one absorbed query per head misses the rotated keys' scores by up to "
      f"{gap:.2f}; at key position 0 (no rotation) by {gap0:.0e}")
check("with RoPE on the up-projected keys, one absorbed query fits only the unrotated key 0",
      gap > 1e-3 and torch.allclose(coupled[..., 0], one_query[..., 0], rtol=0, atol=1e-12))

# %% [markdown]
# ## Step 6: what the cache holds
# Only $c_{KV}$ and $k_R$: $(d_c + d_R)$ numbers per token and layer, against $H(d_n + d_R +
# d_v)$ for multi-head attention with the same heads. Here $32 + 8 = 40$ against
# $4 \cdot (16 + 8 + 16) = 160$.

# %%
latent = make_cache(cfg, 1, dtype=torch.float64)
mha_numbers = cfg.n_layer * H * (d_n + d_R + d_v)
print(f"latent cache: {latent.nbytes_per_token()} bytes/token vs {8 * mha_numbers} for full K "
      f"and V (float64, {cfg.n_layer} layers)")
check("latent cache = n_layer x (d_c + d_R) x 8 bytes, 4x less than MHA here",
      latent.nbytes_per_token() == cfg.n_layer * (d_c + d_R) * 8 == 8 * mha_numbers // 4)

# %% [markdown]
# ## The whole model: naive, cached, absorbed
# The full model without a cache (naive: keys and values rebuilt for every head) against the
# absorbed path decoding token by token over the latent cache.

# %%
ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    naive = model(ids)[0]
    model.mla_absorb = True
    cache = make_cache(cfg, 1, dtype=torch.float64)
    absorbed = torch.cat([model(ids[:, :8], cache=cache)[0]] +
                         [model(ids[:, t:t + 1], cache=cache)[0] for t in range(8, 24)], 1)
err = (naive - absorbed).abs().max().item()
print(f"max |naive - absorbed with latent cache| = {err:.2e}")
check("absorbed decoding over the latent cache equals the naive model (1e-10)", err < 1e-10)

# %% [markdown]
# ## Greedy generation with the compressed cache gives the naive model's tokens
# A check that two methods agree is only as strong as the case it is run on. At the package's
# initialisation (std 0.02) this random model's greedy continuation is one token repeated
# (`[39] * 16`): the residual stream is the input embedding almost unchanged, so the context
# barely matters, and a broken cache would pass. With the scaled weights the continuation
# varies, and it depends on the first prompt token, which reaches later steps only through the
# cache. We compare the logits of every step, not only the argmax.

# %%
prompt = ids[:, :8]
out = greedy_batch(model, prompt, 16)[0].tolist()  # latent cache, absorbed
model.mla_absorb = False
seq, step_logits = prompt, []
with torch.no_grad():
    for _ in range(16):  # recompute everything, naive, every step
        z = model(seq)[0][:, -1]
        step_logits.append(z)
        seq = torch.cat([seq, z.argmax(-1, keepdim=True)], 1)
    model.mla_absorb = True
    cache = make_cache(cfg, 1, dtype=torch.float64)
    z = model(prompt, cache=cache)[0][:, -1]
    gap = 0.0
    for i in range(16):
        gap = max(gap, (z - step_logits[i]).abs().max().item())
        z = model(seq[:, 8 + i:9 + i], cache=cache)[0][:, -1]
print("generated:", out)
print(f"{len(set(out))} distinct tokens; max |logits with latent cache - recomputed| over 16 "
      f"steps = {gap:.1e}")
check("the continuation is not degenerate (at least 8 distinct tokens of 16)", len(set(out)) >= 8)
check("greedy tokens: latent cache == recompute everything", out == seq[0, 8:].tolist())
check("the logits of every step agree (float64, 1e-10)", gap < 1e-10)
other = prompt.clone()
other[0, 0] = (other[0, 0] + 1) % cfg.vocab_size
check("changing the first prompt token changes the continuation (the cache carries it)",
      greedy_batch(model, other, 16)[0].tolist() != out)

# %% [markdown]
# ## Exercises
# 1. Predict the latent cache of this model with `kv_lora_rank=64` in float64, then change it in
#    `cfg` and rerun: the step-6 check tells you (answer: 2 x (64 + 8) x 8 = 1,152 bytes per
#    token; the "4x less" part then fails: it is 160 / 72 = 2.2x).
# 2. DeepSeek-V2-Lite with the same heads as multi-head attention would cache how many bytes per
#    token in bf16? Work it out from the sizes above, then compare with the table printed at the
#    top (answer: 27 x 16 x (128 + 64 + 128) x 2 = 276,480 bytes, 8.9x MLA's).
# 3. Replace the scaling factor 8 by 1 (the package's initialisation) and turn the "not
#    degenerate" check into a `print`. You should see `[39, 39, ...]`; "latent cache ==
#    recompute" and the logits check still pass, and the last check fails: changing the first
#    prompt token changes nothing, so agreement on this sequence could not have caught a cache
#    that lost the prompt.
