"""The PyTorch engine's side of the training loop (train.py): autograd, torch's AdamW, bf16
autocast and torch.compile on request, on CPU, CUDA or Apple's MPS, and across processes with
DistributedDataParallel.

    r = train(TorchTrainer(TorchGPT(cfg, init_params(cfg, tc.seed))), tokenizer, ...)

The parameters, the AdamW moments (saved under the NumPy engine's names) and the checkpoint
format are the NumPy engine's, so a checkpoint from either engine loads in the other.

Distributed: `torchrun --nproc_per_node=N -m llm_deeper train --engine torch ...` starts N
processes (gloo on CPU, nccl on CUDA). The loop draws the same global batch of N x batch_size
windows in every process and each keeps its own slice; DDP averages the gradients, so N
processes take exactly the steps of one process with the N-times larger batch
(tests/test_ddp.py).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from ..errors import UserError
from ..train import TrainConfig
from .model import TorchGPT


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available here; "
                        "use --device cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but this machine has no Apple GPU.")
    return torch.device(device)


def _dist() -> tuple[int, int, int]:
    """(world size, rank, local rank), joining the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 1, 0, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


class TorchTrainer:
    name = "torch"

    def __init__(self, model: TorchGPT, device: str = "cpu", compile: bool = False,
                 bf16: bool | None = None):
        self.world, self.rank, local_rank = _dist()
        if self.world > 1 and device.startswith("cuda"):
            device = f"cuda:{local_rank}"
        self.device = resolve_device(device)
        self.model, self.cfg = model.to(self.device), model.cfg
        self.compile = compile
        bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if bf16 else contextlib.nullcontext
        self.opt: torch.optim.AdamW | None = None

    def setup(self, tc: TrainConfig) -> None:
        torch.manual_seed(tc.seed)  # dropout's masks
        params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(  # matrices decay, gains and biases do not (as optim.py)
            [{"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
            lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, fused=self.device.type == "cuda")
        self.batch_size, self.grad_clip = tc.batch_size, tc.grad_clip
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.forward = torch.compile(self.net) if self.compile else self.net

    def step(self, micro_batches, lr: float) -> tuple[float, float]:
        for g in self.opt.param_groups:
            g["lr"] = lr
        n, B, r = len(micro_batches), self.batch_size, self.rank
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            x, y = (torch.from_numpy(a[r * B:(r + 1) * B]).to(self.device) for a in (x, y))
            # DDP averages gradients across processes after the last micro-batch only
            sync = contextlib.nullcontext() if (self.world == 1 or i == n - 1) \
                else self.net.no_sync()
            with sync, self.autocast():
                _, loss = self.forward(x, y)
                (loss / n).backward()
            loss_sum += loss.detach() / n
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              self.grad_clip or float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss_sum)
            loss_sum /= self.world
        return loss_sum.item(), norm.item()

    @torch.no_grad()
    def loss(self, x, y) -> float:
        was = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                return self.model(torch.from_numpy(x).to(self.device),
                                  torch.from_numpy(y).to(self.device))[1].item()
        finally:
            self.model.train(was)

    def state(self):
        params = {n: p.detach().float().cpu().numpy() for n, p in self.model.named_parameters()}
        opt, t = {}, 0
        for n, p in self.model.named_parameters():
            st = self.opt.state.get(p, {})
            if "exp_avg" in st:
                opt[f"m.{n}"] = st["exp_avg"].float().cpu().numpy()
                opt[f"v.{n}"] = st["exp_avg_sq"].float().cpu().numpy()
                t = int(st["step"])
        opt["t"] = np.array([t], dtype=np.int64)
        return params, opt, None  # dropout draws from torch's global RNG, not saved

    def load_state(self, params: dict, optimizer: dict, rng_state) -> None:
        t = int(optimizer["t"][0])
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(torch.from_numpy(params[n]))
                if f"m.{n}" in optimizer:
                    self.opt.state[p] = {"step": torch.tensor(float(t)),
                                         "exp_avg": torch.from_numpy(optimizer[f"m.{n}"]).to(p),
                                         "exp_avg_sq": torch.from_numpy(optimizer[f"v.{n}"]).to(p)}
