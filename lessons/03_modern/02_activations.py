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
from llm_deeper.figures.layers import activation_curves, activations
from llm_deeper.numpy_engine.ffn import ACT
from llm_deeper.torch_engine.model import TorchGPT

from _common import OUT, QUICK, check

a, curves, grads = activation_curves()  # the engine's forward and backward on a grid of inputs
for name in curves:
    neg = grads[name][a < -0.5]
    print(f"{name:>5}: mean gradient for inputs below -0.5: {neg.mean():+.4f}")
check("ReLU passes no gradient below zero", np.all(grads["relu"][a < 0] == 0))
check("GELU and SiLU do", grads["gelu"][a < -0.5].min() < 0 and grads["silu"][a < -0.5].min() < 0)

# The same function draws docs/figures/activations.png (llm_deeper/figures/layers.py)
activations(OUT / "activations.png", quick=QUICK)
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

# %% [markdown]
# ## Exercises (answers checked below)
# 1. Where is GELU's derivative most negative, and how negative? Read it off `grads["gelu"]`
#    (or the middle panel of the figure). *Answer: at a = -1.42, where g'(a) = -0.129: a unit
#    pushed further negative there gets a (small) gradient pushing it back.*
# 2. Check SiLU's hand-written backward against a central finite difference of its forward,
#    $(f(a + h) - f(a - h)) / 2h$ with $h = 10^{-5}$, on the same grid. *You should see them
#    agree within 1e-8 everywhere.*
# 3. A SwiGLU unit with gate $g = -3$ and up $u = 10$: what does silu(g) x u give? *Answer:
#    -1.42: the negative gate lets through less than 15 % of u, with its sign flipped.*

# %%
i = int(grads["gelu"].argmin())
check(f"exercise 1: GELU' is lowest at a = {a[i]:.2f}, {grads['gelu'][i]:.3f}",
      abs(a[i] + 1.42) < 0.03 and abs(grads["gelu"][i] + 0.129) < 1e-3)
forward = ACT["silu"][0]
fd = (forward(a + 1e-5)[0] - forward(a - 1e-5)[0]) / 2e-5
check("exercise 2: SiLU's backward = finite difference within 1e-8",
      np.abs(fd - grads["silu"]).max() < 1e-8)
check("exercise 3: silu(-3) x 10 = -1.42", round(float(forward(np.array([-3.0]))[0][0] * 10), 2)
      == -1.42)
