# %% [markdown]
# # ZeRO and FSDP: shard the training state, keep the math
#
# Data parallelism (DDP, `docs/torch-engine.md`) gives every rank the whole model and a slice of
# the batch, and all-reduces the gradients so that every rank takes the same step. Every rank
# therefore also holds the same weights, the same gradients and the same AdamW moments: N
# copies of one training state. ZeRO (Rajbhandari et al. 2019, arXiv 1910.02054) removes the
# copies: each rank *owns* 1/N of the state and gets the rest from the others only when it is
# needed. PyTorch's FSDP (Zhao et al. 2023, arXiv 2304.11277) is ZeRO's third stage.
#
# ## The memory formula
#
# Training with AdamW in float32 keeps, per parameter: 4 bytes of weight, 4 of gradient and
# 8 of moments (m and v), **16 bytes**. (The paper's mixed-precision recipe also comes to 16:
# 2 + 2 for fp16 weights and gradients, 12 for the fp32 master weights and moments.) With
# $\Psi$ parameters on $N$ ranks, per rank:
#
# | | weights | gradients | moments | bytes per rank |
# |---|---|---|---|---|
# | DDP | $4\Psi$ | $4\Psi$ | $8\Psi$ | $16\Psi$ |
# | ZeRO-1: moments sharded | $4\Psi$ | $4\Psi$ | $8\Psi/N$ | $8\Psi + 8\Psi/N$ |
# | ZeRO-2: + gradients | $4\Psi$ | $4\Psi/N$ | $8\Psi/N$ | $4\Psi + 12\Psi/N$ |
# | ZeRO-3 = FSDP: + weights | $4\Psi/N$ | $4\Psi/N$ | $8\Psi/N$ | $16\Psi/N$ |
#
# Activations come on top, in every row alike (they depend on the batch, not on $\Psi$).
#
# ## What is communicated, and when
#
# DDP's all-reduce of the gradients is, inside, a **reduce-scatter** (each rank receives the sum
# of one 1/N slice) followed by an **all-gather** (each rank receives every slice): $\Psi$
# numbers each way per rank, up to the factor $(N-1)/N$. ZeRO-1 and 2 split the same traffic
# differently: reduce-scatter the gradients, let each rank update its slice of the weights with
# its slice of the moments, all-gather the updated weights: **the same volume as DDP**. FSDP
# keeps even the weights sharded, so it all-gathers each unit's weights before its forward,
# frees them after, gathers them again for the backward, and reduce-scatters the gradients:
# **1.5 times DDP's volume**, for $16\Psi/N$ bytes of state.
#
# Below, the package's PyTorch model (`preset("small")`) trains on the sonnets, characters, on
# 2 CPU processes three ways: DDP (the package's `TorchTrainer`, exactly as
# `torchrun ... llm-deeper train --engine torch` runs it), ZeRO-1 (DDP with torch's
# `ZeroRedundancyOptimizer`) and FSDP (torch's `fully_shard`), from the same initial weights
# on the same global batches. Same losses, measured bytes per rank.

# %%
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

try:
    from torch.distributed.fsdp import fully_shard  # torch >= 2.6
except ImportError:
    from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import preset
from llm_deeper.data import Batcher, load_text, shakespeare
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.torch_engine.model import TorchGPT
from llm_deeper.torch_engine.train import TorchTrainer
from llm_deeper.train import TrainConfig, lr_at

from _common import OUT, QUICK, check, launch

if not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper data pull shakespeare' first")
WORLD = 2
text = load_text("sonnets")
tok = CharTokenizer.train(text)
ids = np.array(tok.encode(text))
cfg = preset("small", vocab_size=tok.vocab_size, context_length=64)
steps = 3 if QUICK else 20
# batch_size: per rank. No gradient clipping: see after the run, and exercise 3.
tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, grad_clip=0.0)
n_params = cfg.n_params()
print(f"model: preset small, {n_params:,} parameters; {WORLD} ranks x {tc.batch_size} windows "
      f"of {cfg.context_length} characters = a global batch of {WORLD * tc.batch_size}; "
      f"{steps} steps")
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports a lot: do it once

# %% [markdown]
# ## 1. Three trainers, one loop
#
# `TorchTrainer.step` takes each rank's slice of the global batch, runs forward and backward,
# clips the gradient norm (when `grad_clip` is set), steps AdamW and averages the loss over the
# ranks. It learns the number of processes and its rank from the environment, as `torchrun`
# sets it (`WORLD_SIZE`, `RANK`; the launcher below sets them too). The two others
# change only `setup`:
#
# * **ZeRO-1** replaces the optimizer with `ZeroRedundancyOptimizer`, which gives each rank
#   whole tensors (a greedy split by size) to update, and broadcasts the updated tensors.
# * **FSDP** calls `fully_shard(model)` instead of wrapping it in DDP: every parameter becomes a
#   `DTensor` whose rank-local part is 1/N of its rows; a hook before the forward all-gathers the
#   full weights and one after the backward reduce-scatters the gradients and frees them again.
#   The optimizer is built on the shards, so its moments are shards too.
#
# One change to the model: `TorchGPT` caches its name -> tensor dictionary (it saves time when
# decoding), but FSDP swaps the parameter objects (shards at rest, gathered tensors during
# forward and backward), so the sharded model looks its parameters up at every forward.
#
# Here the whole model is one FSDP unit, so the forward gathers all of it at once; real runs
# call `fully_shard` on every block first, so that only one block is ever whole, and overlap
# the next block's all-gather with this block's compute.

# %%
class ShardableGPT(TorchGPT):
    def param_dict(self):
        return dict(self.named_parameters())  # no cache: FSDP swaps the tensors


class ZeRO1Trainer(TorchTrainer):
    def setup(self, tc: TrainConfig) -> None:
        super().setup(tc)  # AdamW (its parameter groups) and DDP
        self.opt = ZeroRedundancyOptimizer(self.opt.param_groups,
                                           optimizer_class=torch.optim.AdamW)


class FSDPTrainer(TorchTrainer):
    def setup(self, tc: TrainConfig) -> None:
        fully_shard(self.model)  # parameters -> DTensor shards, before the optimizer sees them
        world, self.world = self.world, 1  # so that TorchTrainer does not wrap DDP around it
        super().setup(tc)
        self.world = world


def held_bytes(model, opt) -> dict:
    """Bytes of tensor storage this rank holds for parameters, gradients and optimizer state
    (each storage once; a DTensor counts its local shard, padding included)."""
    seen, out = set(), {"weights": 0, "gradients": 0, "moments": 0}

    def add(t, kind):
        t = t.to_local() if hasattr(t, "to_local") else t
        s = t.untyped_storage()
        if (s.data_ptr(), s.nbytes()) not in seen:
            seen.add((s.data_ptr(), s.nbytes()))
            out[kind] += s.nbytes()

    for p in model.parameters():
        add(p, "weights")
        if p.grad is not None:
            add(p.grad, "gradients")
    state = opt.optim.state if isinstance(opt, ZeroRedundancyOptimizer) else opt.state
    for st in state.values():  # exp_avg, exp_avg_sq and a 4-byte step count per tensor
        for v in st.values():
            add(v, "moments")
    return out


# %% [markdown]
# ## 2. Two processes
#
# `worker(rank)` runs in each process: the three runs one after the other, each from a fresh
# copy of the same initial weights and a batcher with the same seed (every rank draws the same
# global batch and keeps its slice). The bytes are counted right after the optimizer's step,
# when weights, gradients and moments all exist (an optimizer step hook).

# %%
def agree(name: str, ok: bool) -> None:
    """check() on rank 0 with every rank's verdict; every rank stops if any failed."""
    flag = torch.tensor([int(bool(ok))])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if dist.get_rank() == 0:
        check(f"{name} (every rank)", bool(flag))
    elif not flag:
        raise SystemExit(f"lesson check failed on another rank: {name}")


def bytes_after_each_step(trainer) -> dict:
    """A dict that held_bytes() refills after every optimizer step."""
    mem = {}
    trainer.opt.register_step_post_hook(
        lambda *_: mem.update(held_bytes(trainer.model, trainer.opt)))
    return mem


def worker(rank: int) -> dict:
    say = print if rank == 0 else (lambda *a, **k: None)
    out = {}
    for kind, Trainer in (("DDP", TorchTrainer), ("ZeRO-1", ZeRO1Trainer),
                          ("FSDP", FSDPTrainer)):
        trainer = Trainer(ShardableGPT(cfg, seed=tc.seed))
        trainer.setup(tc)
        agree(f"{kind}: {WORLD} processes, each on its slice of the batch",
              (trainer.world, trainer.rank) == (WORLD, rank))
        mem = bytes_after_each_step(trainer)
        batches = Batcher(ids, WORLD * tc.batch_size, cfg.context_length, seed=tc.seed)
        losses = [trainer.step([batches.next()], lr_at(s, tc.lr, tc.min_lr, tc.warmup, steps))[0]
                  for s in range(steps)]
        weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                   for n, p in trainer.model.named_parameters()}
        out[kind] = {"losses": losses, "bytes": mem, "weights": weights}
        say(f"{kind:6s}: {steps} steps, last loss {losses[-1]:.6f}; rank {rank} holds "
            f"{sum(mem.values()):,} bytes: " + ", ".join(f"{k} {v:,}" for k, v in mem.items()))
    ddp = out["DDP"]
    for kind in ("ZeRO-1", "FSDP"):
        diff = max(abs(a - b) for a, b in zip(out[kind]["losses"], ddp["losses"]))
        w_diff = max(float((out[kind]["weights"][n] - w).abs().max())
                     for n, w in ddp["weights"].items())
        say(f"{kind} vs DDP: loss max |diff| {diff:.1e}, final weights max |diff| {w_diff:.1e}")
        agree(f"{kind}: the loss at every step = DDP's within 1e-5", diff < 1e-5)
        agree(f"{kind}: the trained weights (gathered) = DDP's within 1e-5", w_diff < 1e-5)
        out[kind]["diff"], out[kind]["w_diff"] = diff, w_diff
    for r in out.values():
        del r["weights"]  # only numbers go back to the parent
    return out


# %% [markdown]
# The launcher (`launch` in `lessons/_common.py`, as in `01_tensor_parallel.py`): forked
# copies of this process in one gloo group on a free loopback port, with the environment torchrun
# sets, one thread each; a failed rank fails the lesson.

# %%
res = launch(worker, WORLD)
print("step   " + "  ".join(f"{k:>9s}" for k in res[0]))
for s in sorted({*range(0, steps, max(1, steps // 5)), steps - 1}):
    print(f"{s + 1:4d}   " + "  ".join(f"{r['losses'][s]:9.6f}" for r in res[0].values()))

# %% [markdown]
# The losses above agree to the last bit on this machine, not merely within 1e-5: with two
# ranks, DDP's all-reduce and FSDP's reduce-scatter add the same two numbers per gradient
# element. The one place where FSDP rounds differently is gradient clipping
# (`TrainConfig.grad_clip`, off here): the norm of the whole gradient is then a sum over each
# rank's shard, all-reduced, which can differ from DDP's in the last bit, and AdamW, which
# divides by $\sqrt{v}$, can blow such a difference up where a gradient is near zero
# (exercise 3).
#
# ## 3. The bytes, measured against the formula
#
# AdamW keeps one 4-byte step count per tensor besides $m$ and $v$, so DDP should hold exactly
# $16\Psi + 4 \cdot n_{tensors}$ bytes. `ZeroRedundancyOptimizer` hands out whole tensors, so
# its split of the moments is only about even. FSDP's shards add up to DDP's bytes, plus the
# step count that each rank keeps for every tensor, plus padding where a tensor's first
# dimension is not a multiple of $N$ (it is padded to one, so that all shards are equal).

# %%
n_tensors = len(list(TorchGPT(cfg, seed=0).parameters()))
total = {k: {r: sum(res[r][k]["bytes"].values()) for r in res} for k in res[0]}
for k in res[0]:
    share = [total[k][r] / total["DDP"][r] for r in res]
    print(f"{k:7s} bytes per rank: " + ", ".join(f"rank {r} {total[k][r]:,}" for r in res) +
          " (" + ", ".join(f"{s:.1%}" for s in share) + " of DDP's)")
check("DDP: every rank holds 16 bytes per parameter (+ a 4-byte step per tensor)",
      all(total["DDP"][r] == 16 * n_params + 4 * n_tensors for r in res))
check("ZeRO-1: weights and gradients whole, the moments split between the ranks",
      all(res[r]["ZeRO-1"]["bytes"]["weights"] + res[r]["ZeRO-1"]["bytes"]["gradients"]
          == 8 * n_params for r in res)
      and sum(res[r]["ZeRO-1"]["bytes"]["moments"] for r in res) == 8 * n_params + 4 * n_tensors)
check("FSDP: each rank holds about 1/N of DDP's bytes (within 1 %)",
      all(abs(total["FSDP"][r] / total["DDP"][r] - 1 / WORLD) < 0.01 for r in res))
extra = sum(total["FSDP"].values()) - total["DDP"][0]
print(f"FSDP's shards add up to DDP's bytes + {extra:,} ({WORLD - 1} x {n_tensors} step counts of "
      f"4 bytes = {4 * n_tensors * (WORLD - 1):,}, the rest padding)")
check("FSDP: the ranks' shards add up to DDP's bytes, plus step counts and padding under 1 %",
      4 * n_tensors * (WORLD - 1) <= extra < 0.01 * total["DDP"][0])

# %% [markdown]
# The formula at a larger scale: a 7B-parameter model on 8 and on 64 GPUs (the paper's Figure 1
# does this for 7.5B parameters). Only ZeRO-3/FSDP keeps shrinking as $N$ grows.

# %%
psi = 7e9
for n in (8, 64):
    row = {"DDP": 16 * psi, "ZeRO-1": 8 * psi + 8 * psi / n, "ZeRO-2": 4 * psi + 12 * psi / n,
           "FSDP": 16 * psi / n}
    print(f"7B on {n} ranks, GB per rank: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in
                                                       row.items()))

# %%
kinds = ["DDP", "ZeRO-1", "ZeRO-2", "FSDP"]
mb = {k: res[0][k]["bytes"] for k in res[0]}
mb["ZeRO-2"] = {"weights": mb["DDP"]["weights"], "gradients": mb["DDP"]["gradients"] / WORLD,
                "moments": mb["DDP"]["moments"] / WORLD}  # formula, not run
fig, ax = plt.subplots(figsize=(7, 4.2))
bottom = np.zeros(len(kinds))
for part, colour in (("weights", "tab:blue"), ("gradients", "tab:orange"),
                     ("moments", "tab:green")):
    h = np.array([mb[k][part] / 2**20 for k in kinds])
    bars = ax.bar(kinds, h, bottom=bottom, color=colour, label=part, edgecolor="white")
    bars[kinds.index("ZeRO-2")].set_hatch("//")
    bottom += h
ax.axhline(16 * n_params / WORLD / 2**20, color="k", ls="--", lw=1, label="16 Ψ / N")
ax.set_ylabel("MiB held by rank 0")
ax.set_title(f"Training state per rank, {n_params:,} parameters, N = {WORLD}\n"
             "(measured; ZeRO-2 hatched: from the formula)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "fsdp_bytes_per_rank.png", dpi=110)
print(f"figure: {OUT / 'fsdp_bytes_per_rank.png'}")

# %% [markdown]
# ## Exercises
#
# 1. How many bytes per rank would FSDP hold for this model on 4 ranks, and ZeRO-1? Work them out
#    from the table above, then set `WORLD = 4` (four processes share two cores) and compare
#    with the printed numbers.
# 2. A 7B-parameter model on 8 GPUs of 80 GB, with 20 GB per GPU needed for activations: which
#    of the four schemes fit? Read it off the printed formula, then find the smallest number of
#    ranks at which ZeRO-1 fits too.
# 3. Turn gradient clipping on (`grad_clip=1.0` in `tc`), print the per-step loss differences
#    and run the full mode (20 steps). ZeRO-1 stays identical to DDP (why?); from which step on
#    does FSDP differ, and which of its two checks fails first: the losses or the weights?
