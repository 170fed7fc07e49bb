# %% [markdown]
# # ReLU, GELU, SwiGLU: shapes and gradient flow
#
# ReLU(a) = max(0, a) has zero gradient for every negative input: a unit that falls negative
# stops learning. GELU(a) = a Phi(a) is smooth and lets a little gradient through below zero.
# SwiGLU (Shazeer 2020; Llama) multiplies a SiLU gate with a second linear projection:
# silu(x W1) * (x W3), so the layer can switch features on and off multiplicatively.

# %%
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.ffn import ACT
from llm_deeper.torch_engine.model import TorchGPT

from _common import OUT, QUICK, check

a = np.linspace(-4, 4, 401)
curves = {name: ACT[name][0](a)[0] for name in ("relu", "gelu", "silu")}
grads = {name: ACT[name][1](np.ones_like(a), ACT[name][0](a)[1]) for name in curves}
for name in curves:
    neg = grads[name][a < -0.5]
    print(f"{name:>5}: mean gradient for inputs below -0.5: {neg.mean():+.4f}")
check("ReLU passes no gradient below zero", np.all(grads["relu"][a < 0] == 0))
check("GELU and SiLU do", grads["gelu"][a < -0.5].min() < 0 and grads["silu"][a < -0.5].min() < 0)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
for name in curves:
    axes[0].plot(a, curves[name], label=name)
    axes[1].plot(a, grads[name], label=name)
axes[0].set_title("activation")
axes[1].set_title("derivative")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
fig.savefig(OUT / "activations.png")
print(f"figure: {OUT / 'activations.png'}")

# %% [markdown]
# ## Gradient flow in a deep model, and a short race
# Same depth and width (SwiGLU's d_ff is 2/3 of the others' so the parameter counts match);
# we compare the gradient norm reaching the embedding at initialisation and the loss after a
# few steps on a counting task (each token is the previous plus one, modulo 32, from a random
# start; the first token cannot be predicted, every other one can).

# %%
torch.manual_seed(0)
x = torch.randint(0, 32, (16, 33))
results = {}
for act, d_ff in (("relu", 192), ("gelu", 192), ("swiglu", 128)):
    cfg = ModelConfig(vocab_size=32, context_length=32, n_layer=8, n_head=4, d_model=48, d_ff=d_ff,
                      activation=act, norm="rmsnorm", position="rope")
    model = TorchGPT(cfg, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = 40 if QUICK else 150
    first_grad = None
    for _ in range(steps):
        batch = (torch.randint(0, 32, (16, 1)) + torch.arange(33)) % 32
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        if first_grad is None:
            first_grad = model.wte.grad.norm().item()
        opt.step()
    results[act] = (cfg.n_params(), first_grad, loss.item())
    print(f"{act:>6}: {cfg.n_params():,} parameters, |grad wte| at init {first_grad:.4f}, "
          f"loss after {steps} steps {loss.item():.3f}")
check("every variant learns", all(r[2] < np.log(32) - 1.0 for r in results.values()))
