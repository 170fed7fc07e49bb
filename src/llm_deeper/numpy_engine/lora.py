"""LoRA: fine-tune a frozen model through low-rank updates (Hu et al. 2021).

For each chosen weight W (out, in), add A (rank, in) and B (out, rank); the layer computes
    y = x W^T + (alpha / rank) * x A^T B^T
Only A and B train (rank * (in + out) numbers instead of in * out). A starts random and B at
zero, so the model starts exactly at the base. Afterwards the update can be folded in,
W' = W + (alpha / rank) B A (merge: no extra cost at inference), or taken out again (unmerge).
The adapter is saved alone (adapter_model.safetensors + adapter_config.json), a few KB to MB.
The forward/backward of the low-rank path is in linear.py, tested against autograd.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..util.paths import atomic_dir
from .model import GPT

# every projection a LoRA adapter can target: attention (MHA/GQA/MQA, or MLA's), then the FFN
ALL_LINEAR = ("wq", "wk", "wv", "wo", "wq_a", "wq_b", "wkv_a", "wkv_b", "w1", "w2", "w3")


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wv"])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def target_names(model: GPT, targets) -> list[str]:
    targets = list(ALL_LINEAR) if list(targets) == ["all-linear"] else list(targets)
    bad = [t for t in targets if t not in ALL_LINEAR]
    if bad:
        raise UserError(f"unknown LoRA target '{bad[0]}'; choose from {', '.join(ALL_LINEAR)} "
                        "or all-linear.")
    names = [k for k in model.params if k.rsplit(".", 1)[-1] in targets and k.startswith("h.")]
    if not names:
        raise UserError(f"no weight of this model matches the LoRA targets {targets}.")
    return names


def add_lora(model: GPT, cfg: LoraConfig, seed: int = 0) -> list[str]:
    """Attach A and B to every target weight and freeze everything else."""
    if cfg.rank < 1:
        raise UserError(f"LoRA rank must be >= 1, got {cfg.rank}.")
    rng = np.random.default_rng(seed)
    names = target_names(model, cfg.targets)
    base = set(model.params)
    for name in names:
        out_f, in_f = model.params[name].shape
        # A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a = sqrt(5)); B = 0
        bound = 1.0 / np.sqrt(in_f)
        model.params[name + ".lora_A"] = rng.uniform(-bound, bound, (cfg.rank, in_f)).astype(
            model.dtype)
        model.params[name + ".lora_B"] = np.zeros((out_f, cfg.rank), dtype=model.dtype)
        model.lora[name] = cfg.scale
    model.frozen = frozenset(base)
    return names


def merge(model: GPT) -> None:
    """Fold every adapter into its weight: W += scale * B A. The factors are kept for unmerge."""
    for name, scale in model.lora.items():
        A, B = model.params[name + ".lora_A"], model.params[name + ".lora_B"]
        model.params[name] += (scale * (B @ A)).astype(model.dtype)
    model.merged_lora = dict(model.lora)
    model.lora = {}


def unmerge(model: GPT) -> None:
    merged = getattr(model, "merged_lora", {})
    for name, scale in merged.items():
        A, B = model.params[name + ".lora_A"], model.params[name + ".lora_B"]
        model.params[name] -= (scale * (B @ A)).astype(model.dtype)
    model.lora = dict(merged)
    model.merged_lora = {}


def strip_lora(params: dict) -> dict:
    return {k: v for k, v in params.items() if not k.endswith((".lora_A", ".lora_B"))}


def adapter_tensors(model: GPT) -> dict:
    return {k: v for k, v in model.params.items() if k.endswith((".lora_A", ".lora_B"))}


def save_adapter(model: GPT, cfg: LoraConfig, out_dir, base: str = "") -> Path:
    from safetensors.numpy import save_file

    with atomic_dir(out_dir) as tmp:
        save_file(adapter_tensors(model), str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(
            {**asdict(cfg), "base_checkpoint": str(base), "format": "llm-deeper-lora"}, indent=2))
    return Path(out_dir)


def load_adapter(model: GPT, adapter_dir) -> LoraConfig:
    from ..checkpoint import read_tensors

    adapter_dir = Path(adapter_dir)
    f = adapter_dir / "adapter_config.json"
    if not f.is_file():
        raise UserError(f"{adapter_dir} is not a LoRA adapter (adapter_config.json is missing).")
    d = json.loads(f.read_text())
    cfg = LoraConfig(rank=int(d["rank"]), alpha=float(d["alpha"]), targets=list(d["targets"]))
    tensors = read_tensors(adapter_dir / "adapter_model.safetensors")
    add_lora(model, cfg)
    for k, v in tensors.items():
        if k not in model.params or model.params[k].shape != v.shape:
            raise UserError(f"adapter tensor {k} does not fit this model.")
        model.params[k][...] = v
    return cfg
