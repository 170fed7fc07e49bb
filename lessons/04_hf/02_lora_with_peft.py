# %% [markdown]
# # LoRA with PEFT: what is trained, how much, and what merging does
#
# LoRA (Hu et al. 2021) freezes a weight W (out x in) and learns a low-rank update:
#
#     W' = W + (alpha / r) * B A,     A: r x in,  B: out x r
#
# B starts at zero, so training starts from the pretrained model exactly. A rank-r adapter on a
# layer costs r * (in + out) parameters instead of in * out. The NumPy engine implements this by
# hand (numpy_engine/lora.py, lessons/02_numpy_gpt/02_train_sample_finetune.py); here PEFT does it
# on SmolLM2-135M and we check its numbers by hand.

# %%
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import OUT, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from peft import LoraConfig, get_peft_model

from llm_deeper.hf.models import load

model, tok = load("smollm2-135m")
total = sum(p.numel() for p in model.parameters())

# %% [markdown]
# ## Parameter counts, by hand and by PEFT
# `target_modules="all-linear"` adapts every linear layer of the blocks (not the output head):
# q, k, v, o in attention, gate, up, down in the SwiGLU MLP.

# %%
r, alpha = 16, 32
cfg = model.config
d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
kv = cfg.num_key_value_heads * hd
shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
          "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}  # (in, out)
by_hand = cfg.num_hidden_layers * sum(r * (i + o) for i, o in shapes.values())
for name, (i, o) in shapes.items():
    print(f"  {name:<10} {i:>5} -> {o:<5}  full {i * o:>9,}   LoRA r={r}: {r * (i + o):>7,}")

peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                        lora_dropout=0.0, task_type="CAUSAL_LM"))
trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
print(f"by hand: {by_hand:,}; PEFT: {trainable:,} trainable of {total + trainable:,} "
      f"({100 * trainable / (total + trainable):.2f} %)")
check("PEFT trains exactly r*(in+out) per adapted layer", trainable == by_hand)

# %% [markdown]
# ## At initialisation the adapter changes nothing
# B = 0, so B A = 0 and the adapted model computes the base model's logits.

# %%
x = tok("To be, or not to be", return_tensors="pt")["input_ids"]
with torch.inference_mode():
    with peft.disable_adapter():
        base = peft(x).logits
    adapted = peft(x).logits
check("fresh adapter = base model", torch.equal(base, adapted))

# %% [markdown]
# ## One layer by hand
# Give A and B values (as training would), and compute the adapted q_proj ourselves:
# y = x W^T + (alpha/r) (x A^T) B^T.

# %%
torch.manual_seed(0)
with torch.no_grad():
    for name, p in peft.named_parameters():
        if "lora_" in name:
            p.copy_(torch.randn_like(p) * 0.02)
layer = peft.base_model.model.model.layers[0].self_attn.q_proj
W = layer.base_layer.weight
A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
h = torch.randn(3, d)
with torch.no_grad():
    mine = h @ W.T + (alpha / r) * (h @ A.T) @ B.T
    theirs = layer(h)
print(f"A {tuple(A.shape)}, B {tuple(B.shape)}, scale alpha/r = {alpha / r}")
check("PEFT's LoRA layer = x W^T + (alpha/r) x A^T B^T", torch.allclose(mine, theirs, atol=1e-5))

# %% [markdown]
# ## Merging
# For serving, fold the update into W once: W' = W + (alpha/r) B A. The merged model is a plain
# transformers model, no PEFT at run time, same outputs (up to float rounding).

# %%
with torch.inference_mode():
    adapted = peft(x).logits
    peft.save_pretrained(OUT / "random-adapter")
    merged = peft.merge_and_unload()
    after = merged(x).logits
size = (OUT / "random-adapter" / "adapter_model.safetensors").stat().st_size
print(f"adapter file: {size / 1e6:.1f} MB (float32) vs the model's {4 * total / 1e6:.0f} MB")
print(f"max |adapted - merged| = {float((adapted - after).abs().max()):.2e}")
check("merged model = adapted model", torch.allclose(adapted, after, atol=1e-3))
check("merged model is plain transformers", type(merged).__name__ == "LlamaForCausalLM")

# %% [markdown]
# ## Exercises
# 1. Predict PEFT's trainable count for `r = 4` from the table of shapes, then change `r` and
#    rerun: the first check tells you (answer: a quarter of rank 16's: 30 x 4 x 10,176 =
#    1,221,120).
# 2. The merged model matches the adapted one to 1e-3, not exactly. Why? (Float32 rounding: the
#    merge rounds W + (alpha/r) B A once, while the adapter computes x W^T and (alpha/r) x A^T B^T
#    separately and adds them; the sums are done in different orders.)
# 3. PEFT starts B at zero and A at random values. Why not both at zero? (The gradient of A is
#    proportional to B, and that of B to A: with both zero neither would ever move. With B = 0
#    the adapter is a no-op at first and B gets a gradient at the first step.)
