# %% [markdown]
# # Tensor parallelism: every weight matrix split across two processes
#
# Data parallelism (DDP, `docs/torch-engine.md`) gives every process a whole copy of the model
# and a slice of the batch. That stops working when one copy no longer fits a device. Megatron-LM
# (Shoeybi et al. 2019, arXiv 1909.08053) splits the model itself: every block's weight
# matrices are cut into N pieces, one per process ("rank"), so that each rank stores and
# multiplies 1/N of them, and the ranks meet only twice per block to add up their partial
# results. Every rank sees the *same* tokens.
#
# Here N = 2 CPU processes on this machine, talking over gloo (localhost TCP). We shard the
# package's own Llama-style model (`preset("small")`: RoPE, RMSNorm, SwiGLU, 4 query heads
# sharing 2 key/value heads), run its own `ffn`, `attention` and whole `forward` on the shards,
# and check on every rank that the outputs and the gradients are those of the unsplit model.
#
# A note on layouts: Megatron writes a linear layer as $Y = XA$ with $A$ of shape (in, out);
# PyTorch (and this package) store $W = A^\top$ of shape (out, in) and compute $xW^\top$. So
# Megatron's "split $A$ by columns" is "split $W$ by rows" here. Below, *column-parallel* means
# each rank owns some **output** features, *row-parallel* that it owns some **input** features.

# %%
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import preset
from llm_deeper.torch_engine.attention import attention
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.ffn import ffn
from llm_deeper.torch_engine.model import TorchGPT, forward
from llm_deeper.torch_engine.positions import rope_table

from _common import OUT, QUICK, check, launch

WORLD = 2  # processes; n_head, n_kv_head and d_ff must be divisible by it
cfg = preset("small", n_layer=2 if QUICK else 4)
B, T = (2, 16) if QUICK else (4, 64)  # batch and sequence length of the test inputs
TOL = dict(rtol=1e-5, atol=1e-6)  # float32; only the order of the sums changes
print(f"model: {cfg.n_layer} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, {cfg.n_head} query "
      f"heads and {cfg.n_kv_head} key/value heads of {cfg.head_dim}; "
      f"{cfg.n_params():,} parameters; {WORLD} ranks")

# %% [markdown]
# ## 1. The MLP: split $d_{ff}$
#
# SwiGLU computes $h = \mathrm{SiLU}(xW_1^\top) \odot (xW_3^\top)$, then $y = hW_2^\top$, with
# $W_1, W_3$ of shape $(d_{ff}, d)$ and $W_2$ of shape $(d, d_{ff})$. Cut $W_1$ and $W_3$ into
# row blocks $W_1 = [W_1^{(0)}; W_1^{(1)}]$: rank $r$ computes
# $h^{(r)} = \mathrm{SiLU}(xW_1^{(r)\top}) \odot (xW_3^{(r)\top})$, its $d_{ff}/N$ hidden
# features, **with no communication**, because SiLU and $\odot$ act feature by feature. Cut
# $W_2$ into the matching column blocks $W_2 = [W_2^{(0)}, W_2^{(1)}]$:
#
# $$y = hW_2^\top = \sum_{r} h^{(r)} W_2^{(r)\top}$$
#
# Each rank holds one term of the sum, a full-size $(B, T, d)$ partial result, and **one
# all-reduce** (every rank receives the sum of everyone's tensor) finishes the layer. Splitting
# $W_1$ by columns instead would need a sum *before* the nonlinearity: that is why the first
# matrix goes by rows and the second by columns.
#
# ## 2. Attention: split the heads
#
# Heads are independent until the output projection. Rank $r$ keeps the rows of
# $W_q, W_k, W_v$ that produce its $H/N$ query heads and $KV/N$ key/value heads (with GQA, query
# head $h$ reads key/value head $\lfloor h / (H/KV) \rfloor$, so contiguous blocks of heads stay
# together), computes their attention locally, and multiplies by its columns of $W_o$:
#
# $$\mathrm{out} = [o_0, \dots, o_{H-1}]\, W_o^\top = \sum_r [o_h]_{h \in r}\, W_o^{(r)\top}$$
#
# Again one all-reduce per layer. RoPE rotates within a head, so it needs nothing.
#
# ## 3. Two operators: $f$ and $g$
#
# Megatron names the two places where ranks talk. $g$ sits after the row-parallel matrix:
# all-reduce in the forward pass, identity in the backward (the gradient of a sum reaches every
# term unchanged). $f$ sits where the replicated input enters a column-parallel matrix: identity
# forward; in the backward each rank only has its part of $\partial L / \partial x$ (through its
# own rows), so $f$ all-reduces the gradient. A block therefore costs two all-reduces of
# $B \cdot T \cdot d$ numbers forward and two backward. Everything else (embeddings, norms, the
# residual stream) is replicated: every rank computes it identically.
#
# The package's decoder routes every projection through the step context's `linear`
# (`torch_engine/context.py`), so tensor parallelism is a context whose `linear` passes the
# input through $f$ before a column-parallel matrix and the output through $g$ after a
# row-parallel one; the layer code itself is unchanged.

# %%
COLUMN = ("wq", "wk", "wv", "w1", "w3")  # each rank owns output features: rows of W (out, in)
ROW = ("wo", "w2")  # each rank owns input features: columns of W
SENT = {"forward": 0, "backward": 0}  # bytes all-reduced, counted by f and g


def slice_of(name: str, w, rank: int, world: int = WORLD):
    """Rank `rank`'s piece of parameter `name` (a view); embeddings and norms whole. (This
    model has no biases; a row-parallel layer's bias would be added once, after the sum.)"""
    kind = name.rsplit(".", 1)[-1]
    if kind in COLUMN:
        return w.chunk(world, dim=0)[rank]
    if kind in ROW:
        return w.chunk(world, dim=1)[rank]
    return w


def all_reduce(t, phase: str):
    t = t.clone()
    dist.all_reduce(t)  # sum over the ranks, result on every rank
    SENT[phase] += t.numel() * t.element_size()
    return t


class F_(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce of the input's gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, "backward")


class G_(torch.autograd.Function):
    """Megatron's g: all-reduce of the partial outputs forward, identity backward."""

    @staticmethod
    def forward(ctx, y):
        return all_reduce(y, "forward")

    @staticmethod
    def backward(ctx, grad):
        return grad


class TensorParallel(StepContext):
    """The plain step context, with f before the column-parallel projections (once per input:
    q, k and v, or gate and up, share it) and g after the row-parallel ones."""

    _x = _fx = None

    def linear(self, x, p, name):
        kind = name.rsplit(".", 1)[-1]
        if kind in COLUMN:
            if x is not self._x:
                self._x, self._fx = x, F_.apply(x)
            return super().linear(self._fx, p, name)
        y = super().linear(x, p, name)
        return G_.apply(y) if kind in ROW else y


# Each rank runs the package's code with the config of its slice: H/N query heads and KV/N
# key/value heads of the same head_dim (the config derives head_dim = d_model / n_head, so its
# d_model reads d/N; the residual stream x stays d wide and replicated).
cfg_r = cfg.replace(n_head=cfg.n_head // WORLD, n_kv_head=cfg.n_kv_head // WORLD,
                    d_model=cfg.d_model // WORLD, d_ff=cfg.d_ff // WORLD)
check("a rank's heads have the full model's head_dim", cfg_r.head_dim == cfg.head_dim)

# %% [markdown]
# ## 4. Two processes
#
# `worker(rank)` runs in each process. Both build the same full model from the same seed (the
# single-process reference) and take their shards of it. A check passes only if it passes on
# every rank (`agree`: a min-all-reduce of the verdicts); a failure stops every rank, and the
# launcher turns a failed rank into a failed lesson.

# %%
def agree(name: str, ok: bool) -> None:
    """check() on rank 0 with every rank's verdict; every rank stops if any failed."""
    flag = torch.tensor([int(bool(ok))])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if dist.get_rank() == 0:
        check(f"{name} (every rank)", bool(flag))
    elif not flag:
        raise SystemExit(f"lesson check failed on another rank: {name}")


def max_err(a, b) -> float:
    return float((a - b).detach().abs().max())


def compare_layer(rank, say, layer_fn, prefix: str, full: dict) -> dict:
    """One sub-layer, full vs sharded: outputs and gradients (weights and input) equal."""
    g = torch.Generator().manual_seed(1)  # the same x and upstream gradient on every rank
    x, dy = torch.randn(B, T, cfg.d_model, generator=g), torch.randn(B, T, cfg.d_model, generator=g)
    names = [n for n in full if n.startswith(prefix)]
    whole = {n: full[n].clone().requires_grad_() for n in names}
    shard = {n: slice_of(n, full[n], rank).clone().requires_grad_() for n in names}
    x_full, x_tp = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_full = layer_fn(cfg, x_full, whole, StepContext())
    (y_full * dy).sum().backward()
    y_tp = layer_fn(cfg_r, x_tp, shard, TensorParallel())
    (y_tp * dy).sum().backward()
    errs = {"out": max_err(y_tp, y_full), "dx": max_err(x_tp.grad, x_full.grad)}
    ok = torch.allclose(y_tp, y_full, **TOL) and torch.allclose(x_tp.grad, x_full.grad, **TOL)
    for n in names:
        errs[n] = max_err(shard[n].grad, slice_of(n, whole[n].grad, rank))
        ok &= torch.allclose(shard[n].grad, slice_of(n, whole[n].grad, rank), **TOL)
        say(f"  {n:14s} full {tuple(whole[n].shape)} -> rank {rank} holds "
            f"{tuple(shard[n].shape)}; gradient max |diff| {errs[n]:.1e}")
    say(f"  output max |diff| {errs['out']:.1e}, input gradient max |diff| {errs['dx']:.1e}")
    return {"ok": ok, **errs}


def worker(rank: int) -> dict:
    say = print if rank == 0 else (lambda *a, **k: None)
    ref = TorchGPT(cfg, seed=0)  # the single-process model, identical on every rank
    full = {n: p.detach() for n, p in ref.named_parameters()}
    out = {}

    say("\nthe MLP of block 0 (SwiGLU), w1 and w3 by rows, w2 by columns:")
    r = compare_layer(rank, say, lambda c, x, p, ctx: ffn(c, x, p, "h.0.ffn.", ctx),
                      "h.0.ffn.", full)
    agree("MLP: sharded output and gradients = the full layer's", r.pop("ok"))
    out["mlp"] = r

    def attn(c, x, p, ctx):
        cos, sin = rope_table(c, x.device, x.dtype)
        ctx.rope = (cos[:T], sin[:T])
        return attention(c, x, p, "h.0.attn.", 0, ctx)

    say("\nthe attention of block 0, heads split (wq, wk, wv by rows, wo by columns):")
    r = compare_layer(rank, say, attn, "h.0.attn.", full)
    agree("attention: sharded output and gradients = the full layer's", r.pop("ok"))
    out["attn"] = r

    # The whole model: the package's forward() with the shards and the tensor-parallel context.
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    logits_full, loss_full = ref(ids[:, :-1], ids[:, 1:])
    loss_full.backward()
    p_tp = {n: slice_of(n, w, rank).clone().requires_grad_() for n, w in full.items()}
    SENT.update(forward=0, backward=0)
    logits, loss = forward(p_tp, cfg_r, ids[:, :-1], ids[:, 1:], TensorParallel())
    loss.backward()
    grad_err = max(max_err(p.grad, slice_of(n, ref.get_parameter(n).grad, rank))
                   for n, p in p_tp.items())
    out["model"] = {"logits": max_err(logits, logits_full), "loss": abs(loss.item() -
                    loss_full.item()), "grads": grad_err, "sent": dict(SENT)}
    say(f"\nthe whole model ({cfg.n_layer} blocks): logits max |diff| {out['model']['logits']:.1e}"
        f", loss {loss.item():.6f} vs {loss_full.item():.6f}, every gradient max |diff| "
        f"{grad_err:.1e}")
    agree("whole model: tensor-parallel logits = the single-process model's",
          torch.allclose(logits, logits_full, **TOL))
    agree("whole model: every shard's gradient = its slice of the full gradient (replicated "
          "weights: the whole gradient, with no extra communication)",
          all(torch.allclose(p.grad, slice_of(n, ref.get_parameter(n).grad, rank), **TOL)
              for n, p in p_tp.items()))
    numel = B * T * cfg.d_model * 4  # one all-reduce of the (B, T, d) float32 residual update
    agree("forward: 2 all-reduces of B*T*d numbers per block, and 2 in the backward",
          SENT == {"forward": 2 * cfg.n_layer * numel, "backward": 2 * cfg.n_layer * numel})
    out["params"] = sum(p.numel() for p in p_tp.values())
    return out


# %% [markdown]
# The launcher (`launch` in `lessons/_common.py`, shared with the FSDP lesson): `WORLD` forked
# copies of this process (no second import of torch), joined into one gloo group on a free
# loopback port. A rank that fails (a failed check raises SystemExit) exits non-zero,
# `start_processes` then stops the others and raises, and so does this lesson. One thread per
# process, so two ranks fit two cores.

# %%
res = launch(worker, WORLD)

# %% [markdown]
# ## 5. What it buys and what it costs
#
# **Memory.** Per block, the attention and MLP matrices hold
# $2Hd_h d + 2KVd_h d + 3dd_{ff}$ numbers; each rank keeps $1/N$ of them. Embeddings and norms
# stay whole here (Megatron also splits the embedding by vocabulary rows; the LM head's logits
# then need a third collective).
#
# **Communication**, per token: $2 \cdot n_{layer} \cdot d$ numbers all-reduced forward and as
# many backward, whatever the model's size beyond $d$. (A ring all-reduce of $M$ bytes makes
# each rank send $2(N-1)/N \cdot M$; for $N = 2$ that is $M$.) DDP all-reduces the gradients
# once per step instead, $4 \cdot n_{params}$ bytes whatever the batch. Tensor parallelism
# trades memory for traffic that grows with every token, and sits on the critical path of every
# layer: that is why it stays inside one machine's fast links (Megatron: 8 GPUs over NVLink),
# with data parallelism across machines.

# %%
n_full = cfg.n_params()
per_layer = (2 * cfg.n_head * cfg.head_dim * cfg.d_model + 2 * cfg.n_kv_head * cfg.head_dim
             * cfg.d_model + 3 * cfg.d_model * cfg.d_ff)
per_rank = n_full - cfg.n_layer * per_layer + cfg.n_layer * per_layer // WORLD
print(f"\nparameters: one process {n_full:,} ({4 * n_full:,} bytes); each rank "
      f"{res[0]['params']:,} ({4 * res[0]['params']:,} bytes, {res[0]['params'] / n_full:.0%})")
check("parameters per rank = replicated + sharded / N (by formula)",
      all(r["params"] == per_rank for r in res.values()))
sent = res[0]["model"]["sent"]
tokens = B * T
print(f"all-reduced for {tokens} tokens: forward {sent['forward']:,} bytes, backward "
      f"{sent['backward']:,} bytes = {sent['forward'] // tokens:,} + {sent['backward'] // tokens:,}"
      f" bytes per token (2 x {cfg.n_layer} layers x d {cfg.d_model} x 4 bytes each way)")
print(f"DDP would all-reduce the gradients instead: {4 * n_full:,} bytes per step, "
      f"the same for {tokens} tokens or a million")
d7, L7 = 4096, 32  # a Llama-2-7B-sized model, bf16 activations
print(f"at 7B scale (d 4096, 32 layers, 2-byte activations): {2 * 2 * L7 * d7 * 2 / 2**20:.2f} "
      f"MiB per token forward + backward; DDP {2 * 6.74e9 / 2**30:.1f} GiB per step")
print("\nlargest differences from the single-process model (float32; tolerance "
      f"rtol {TOL['rtol']}, atol {TOL['atol']}):")
for rank, r in res.items():
    print(f"  rank {rank}: MLP output {r['mlp']['out']:.1e}, attention output "
          f"{r['attn']['out']:.1e}, logits {r['model']['logits']:.1e}, loss "
          f"{r['model']['loss']:.1e}, gradients {r['model']['grads']:.1e}")

# %% [markdown]
# The figure: who holds what in block 0, drawn by the same `slice_of` the ranks used (each
# matrix (out, in) as stored; the norms are held whole by both).

# %%
shapes = {n: tuple(p.shape) for n, p in TorchGPT(cfg, seed=0).named_parameters()}
rows = [("attn", ["wq", "wk", "wv", "wo"]), ("ffn", ["w1", "w3", "w2"])]
big = max(max(s) for s in shapes.values())
fig, axes = plt.subplots(2, 4, figsize=(13, 7.5))
for (part, kinds), line in zip(rows, axes):
    for ax, kind in zip(line, kinds):
        name = f"h.0.{part}.{kind}"
        owner = torch.zeros(shapes[name])
        for r in range(WORLD):
            slice_of(name, owner, r).fill_(r)
        out_dim, in_dim = owner.shape
        im = ax.imshow(owner.numpy(), cmap=plt.get_cmap("coolwarm", WORLD), vmin=-0.5,
                       vmax=WORLD - 0.5, extent=(0, in_dim, out_dim, 0), interpolation="nearest")
        ax.set_xlim(0, big)
        ax.set_ylim(big, 0)  # one scale for every matrix: areas compare
        for r in range(WORLD):  # label each piece at its centre
            idx = (owner == r).nonzero()
            (y0, x0), (y1, x1) = idx.min(0).values.tolist(), idx.max(0).values.tolist()
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"rank {r}", ha="center", va="center",
                    color="white", fontsize=8)
        split = "rows (output features)" if kind in COLUMN else "columns (input features)"
        comm = "f before" if kind in COLUMN else "g after: all-reduce"
        ax.set_title(f"{part}.{kind} {shapes[name]}\nsplit by {split}\n{comm}", fontsize=9)
        ax.set_xlabel("in")
        ax.set_ylabel("out")
axes[1, 3].axis("off")
bar = fig.colorbar(im, ax=axes[1, 3], orientation="horizontal", ticks=range(WORLD),
                   fraction=0.08, pad=0.02)
bar.set_ticklabels([f"rank {r}" for r in range(WORLD)])
bar.set_label("the process that holds the entry")
hq, hkv, hf = cfg.n_head // WORLD, cfg.n_kv_head // WORLD, cfg.d_ff // WORLD


def span(n: int, r: int) -> str:
    return f"{n * r}" if n == 1 else f"{n * r}-{n * r + n - 1}"


held = "\n".join(f"rank {r}: query heads {span(hq, r)}, key/value\n  heads {span(hkv, r)}, "
                  f"hidden features {span(hf, r)}" for r in range(WORLD))
axes[1, 3].text(0, 0.5, f"{held}\n\nwhole on every rank: wte, norm1,\nnorm2, norm_f\n\n"
                "per block: 2 all-reduces forward (g),\n2 backward (f)", va="center", fontsize=10)
fig.suptitle("Tensor parallelism: block 0's weights as stored (out, in), on one scale")
fig.tight_layout()
fig.savefig(OUT / "tensor_parallel_shards.png", dpi=110)
print(f"\nfigure: {OUT / 'tensor_parallel_shards.png'}")

# %% [markdown]
# ## Exercises
#
# 1. With $N = 4$ ranks (and a model with 4 key/value heads), how many parameters would each
#    rank hold for `preset("small")`? Answer with the formula of section 5; check it by setting
#    `WORLD = 4` and `cfg = preset("small", n_kv_head=4)` (four processes run on two cores,
#    only slower).
# 2. From the printed numbers: how many tokens per step make tensor parallelism all-reduce as
#    many bytes (forward + backward) as DDP does for this model's gradients? Check by choosing
#    `B` and `T` with that product and comparing the two printed lines.
# 3. Remove $f$ (in `TensorParallel.linear`, use `x` itself instead of `F_.apply(x)`) and run
#    again. The MLP check fails: which of the printed differences is no longer ~1e-8, and why do
#    the MLP's own weight gradients still match without any communication?
