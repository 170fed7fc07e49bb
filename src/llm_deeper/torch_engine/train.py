"""Training with the PyTorch engine: the NumPy engine's loop with autograd, on CPU or CUDA, and
across processes with DistributedDataParallel.

Same `TrainConfig`, batches, learning-rate schedule and checkpoint format as the NumPy engine
(AdamW moments saved under the same names), so a checkpoint from either engine loads in the other.

Distributed: `torchrun --nproc_per_node=N -m llm_deeper train --engine torch ...` starts N
processes (gloo on CPU, nccl on CUDA). Every process draws the same global batch of
N x batch_size windows and keeps its own slice; DDP averages the gradients, so N processes take
exactly the steps of one process with the N-times larger batch (tests/test_ddp.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, read_tensors, save_checkpoint
from ..config import ModelConfig
from ..data.batching import Batcher
from ..errors import UserError
from ..numpy_engine.optim import lr_at
from ..numpy_engine.train import TrainConfig
from .model import TorchGPT


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available here; "
                        "use --device cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but this machine has no Apple GPU.")
    return torch.device(device)


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 1, 0, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


@torch.no_grad()
def estimate_loss(model, ids, iters, batch_size, seed, device, autocast) -> float:
    was = model.training
    model.eval()
    b = Batcher(ids, batch_size, model.cfg.context_length, seed=seed, name="validation text")
    losses = []
    for _ in range(iters):
        x, y = (torch.from_numpy(a).to(device) for a in b.next())
        with autocast():
            losses.append(model(x, y)[1].item())
    model.train(was)
    return float(np.mean(losses)) if losses else float("nan")


def train_torch(cfg: ModelConfig, tokenizer, train_ids, val_ids, tc: TrainConfig, out_dir, *,
                device: str = "cpu", resume: bool = False, compile: bool = False,
                bf16: bool | None = None, progress: bool = True, log=print,
                stop_after: int | None = None) -> dict:
    out_dir = Path(out_dir)
    world, rank, local_rank = _dist()
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"
    dev = resolve_device(device)
    bf16 = (dev.type == "cuda") if bf16 is None else bf16
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else \
        contextlib.nullcontext
    torch.manual_seed(tc.seed)
    from ..params import init_params

    model = TorchGPT(cfg, init_params(cfg, tc.seed)).to(dev)
    names = [n for n, _ in model.named_parameters()]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr,
                            betas=(tc.beta1, tc.beta2), eps=1e-8, fused=dev.type == "cuda")
    batches = Batcher(train_ids, tc.batch_size * world, cfg.context_length, seed=tc.seed,
                      name="training text")
    history, step = {"train": [], "val": []}, 0
    if resume:
        _, params, _, state = load_checkpoint(out_dir)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.from_numpy(params[n]))
        _load_opt(opt, model, read_tensors(out_dir / "optimizer.safetensors"))
        batches.set_state(state["batch_rng"])
        history, step = state["history"], int(state["step"])
        log(f"resumed from {out_dir} at step {step}")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    step_fn = torch.compile(net) if compile else net

    def save():
        if rank != 0:
            return
        from ..viz import plot_losses

        params = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
        state = {"step": step, "batch_rng": batches.state(), "dropout_rng": None,
                 "history": history, "train_config": dataclasses.asdict(tc), "engine": "torch"}
        save_checkpoint(out_dir, cfg, params, tokenizer, optimizer_state=_opt_state(opt, model),
                        trainer_state=state, extra_files={"loss_curve.png": lambda p: plot_losses(
                            history, p, f"{cfg.n_params() / 1e6:.2f}M-parameter model (torch)")})

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=step, desc="train (torch)", unit="step",
               disable=not progress or rank != 0, dynamic_ncols=True)
    tokens_per_step = tc.batch_size * world * tc.grad_accum * cfg.context_length
    t0, start, interrupted = time.perf_counter(), step, False
    B = tc.batch_size
    try:
        while step < tc.steps:
            if stop_after is not None and step - start >= stop_after:
                interrupted = True
                break
            lr = lr_at(step, tc.lr, tc.min_lr, tc.warmup, tc.steps)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=dev)
            for micro in range(tc.grad_accum):
                x, y = batches.next()
                x, y = (torch.from_numpy(a[rank * B:(rank + 1) * B]).to(dev) for a in (x, y))
                sync = contextlib.nullcontext() if (world == 1 or micro == tc.grad_accum - 1) \
                    else net.no_sync()
                with sync, autocast():
                    _, loss = step_fn(x, y)
                    (loss / tc.grad_accum).backward()
                loss_sum += loss.detach() / tc.grad_accum
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_sum)
                loss_sum /= world
            step += 1
            loss_v = loss_sum.item()
            history["train"].append([step, loss_v])
            tps = (step - start) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.1e}",
                            gnorm=f"{norm.item():.2f}")
            if step % tc.eval_interval == 0 or step == tc.steps:
                iters = tc.final_eval_iters if step == tc.steps else tc.eval_iters
                val = estimate_loss(model, val_ids, iters, tc.batch_size, tc.seed + 2, dev,
                                    autocast)
                history["val"].append([step, val])
                if rank == 0:
                    bar.write(f"step {step}: train loss {loss_v:.4f}, val loss {val:.4f}")
                save()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        save()
    elapsed = time.perf_counter() - t0
    return {"step": step, "interrupted": interrupted,
            "train_loss": history["train"][-1][1] if history["train"] else None,
            "val_loss": history["val"][-1][1] if history["val"] else None, "seconds": elapsed,
            "tokens_per_s": (step - start) * tokens_per_step / max(elapsed, 1e-9),
            "history": history, "model": model, "world_size": world, "names": names}


def _opt_state(opt, model) -> dict:
    out, t = {}, 0
    for n, p in model.named_parameters():
        st = opt.state.get(p, {})
        if "exp_avg" in st:
            out[f"m.{n}"] = st["exp_avg"].float().cpu().numpy()
            out[f"v.{n}"] = st["exp_avg_sq"].float().cpu().numpy()
            t = int(st["step"])
    out["t"] = np.array([t], dtype=np.int64)
    return out


def _load_opt(opt, model, state: dict) -> None:
    t = int(state["t"][0])
    for n, p in model.named_parameters():
        if f"m.{n}" in state:
            opt.state[p] = {"step": torch.tensor(float(t)),
                            "exp_avg": torch.from_numpy(state[f"m.{n}"]).to(p),
                            "exp_avg_sq": torch.from_numpy(state[f"v.{n}"]).to(p)}
