"""LoRA and QLoRA on a pretrained model in our PyTorch engine, on CPU: one loop for both.

    lora    the frozen base in float32; trainable A, B beside every target matrix
    qlora   the frozen base in NF4 (quantization/torch_nf4.py, blocks of 64), dequantized on the
            fly in each product, forward and backward; the same A, B in float32

The forward pass is model.forward itself. The adapters go through the step context's `lora`
(weight name -> alpha / r; the factors are `params[name + ".lora_A"]` and `".lora_B"`), so every
target computes x W^T + (alpha / r) (x A^T) B^T, where x W^T is `matmul(x, W)`: F.linear for a
float W, `W.linear(x)` for an NF4Weight. The base gets no gradient in either method (its float
tensors have requires_grad False; an NF4Weight is not a tensor at all).

The data are the HF path's (hf/finetune.py): each conversation is rendered by the model's chat
template (chat/template.py, the same ids as transformers' apply_chat_template) and tokenized by
`tokenize_conversation`, which labels the assistant's turns and gives -100 to everything else.
The loss is the mean cross-entropy over the labelled tokens of a batch, as TRL's; only those
positions go through the LM head (`_LabelledRows.select`), which spares the (B, T, 49152)
logits of the system prompt and the requests.

The adapter is written as PEFT writes it (adapter_model.safetensors with PEFT's tensor names,
adapter_config.json), so `eval toolcalls --adapter`, `chat --adapter`, `merge` and `serve
--lora-modules` read it like any adapter from the HF path.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .context import StepContext
from .model import forward

METHODS = ("lora", "qlora")
LAYER_WEIGHTS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3")
# PEFT's module names (transformers' Llama) -> ours; `--targets` takes either.
HF_TARGETS = {"q_proj": "attn.wq", "k_proj": "attn.wk", "v_proj": "attn.wv", "o_proj": "attn.wo",
              "gate_proj": "ffn.w1", "up_proj": "ffn.w3", "down_proj": "ffn.w2"}


class ChatTokenizer:
    """Our BPE and the model's chat template behind the two calls `tokenize_conversation` makes
    of a transformers tokenizer (apply_chat_template(..., tokenize=False) and tok(text))."""

    def __init__(self, bpe, chat_template: str):
        self.bpe, self.chat_template = bpe, chat_template

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        from ..chat.template import render_chat

        return render_chat(self.chat_template, messages, add_generation_prompt)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.bpe.encode(text)}


def layer_targets(targets) -> list[str]:
    """'all-linear', or our short names (wq, w1, ...) or PEFT's (q_proj, ...), -> the names
    within a layer ('attn.wq', ...)."""
    if targets in ("all-linear", ["all-linear"]):
        return list(LAYER_WEIGHTS)
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    ours = {w.split(".")[1]: w for w in LAYER_WEIGHTS}
    short = []
    for t in (t.strip() for t in items if t.strip()):
        w = HF_TARGETS.get(t) or ours.get(t)
        if w is None:
            raise UserError(f"unknown LoRA target '{t}'; use all-linear or some of "
                            f"{', '.join(ours)} (or {', '.join(HF_TARGETS)}).")
        short.append(w)
    if not short:
        raise UserError("--targets names no weight; use all-linear or e.g. wq,wv.")
    return list(dict.fromkeys(short))


def target_names(cfg, targets) -> list[str]:
    """The weights that get an adapter: every layer's `layer_targets(targets)`."""
    return [f"h.{i}.{w}" for i in range(cfg.n_layer) for w in layer_targets(targets)]


def load_base(model: str, method: str, block_size: int = 64, double_quant: bool = False):
    """(config, params, tokenizer, eos id) of a registry model or GGUF file, frozen: every layer
    matrix in NF4 for qlora (norms and the embedding / tied LM head stay float32)."""
    from ..pretrained.models import gguf_file
    from ..pretrained.weights import load_gguf
    from ..quantization.torch_nf4 import quantize_params

    if method not in METHODS:
        raise UserError(f"--engine torch trains --method lora or qlora, got '{method}'.")
    pre = load_gguf(gguf_file(model, "--engine torch reads GGUF files"))
    if not pre.chat_template:
        raise UserError(f"{model} has no chat template; conversations cannot be rendered.")
    params = {}
    for name in list(pre.params):  # one float copy at a time: the GGUF's arrays are dropped
        a = pre.params.pop(name)
        params[name] = torch.from_numpy(a if a.flags.writeable else a.copy())
    if method == "qlora":
        matrices = [f"h.{i}.{w}" for i in range(pre.config.n_layer) for w in LAYER_WEIGHTS]
        quantize_params(params, matrices, block_size, double_quant)
    return pre.config, params, ChatTokenizer(pre.tokenizer, pre.chat_template), pre.eos_id


def add_lora(params: dict, names: list[str], rank: int, alpha: float, seed: int = 0) -> dict:
    """A (r, in) ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a = sqrt(5)) and B
    (out, r) = 0 for each target, trainable; returns the step context's {name: alpha / r}."""
    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}.")
    g = torch.Generator().manual_seed(seed)
    for name in names:
        out_f, in_f = params[name].shape
        bound = 1 / math.sqrt(in_f)
        params[name + ".lora_A"] = ((torch.rand(rank, in_f, generator=g) * 2 - 1) * bound
                                    ).requires_grad_()
        params[name + ".lora_B"] = torch.zeros(out_f, rank, requires_grad=True)
    return {name: alpha / rank for name in names}


class _LabelledRows(StepContext):
    """The step context of a training batch: the LM head sees only the positions that have a
    label (the assistant's tokens), as one row (1, N, d_model). With `checkpointing`, each block
    keeps only its input for the backward pass and runs its forward again there (activation
    checkpointing, as TRL does by default): memory for one layer's activations instead of 30,
    for a third more compute."""

    def __init__(self, lora: dict, keep: torch.Tensor, checkpointing: bool = True):
        super().__init__(lora=lora)
        self.keep, self.checkpointing = keep, checkpointing  # keep: (B, T) bool

    def block(self, fn, cfg, x, p, layer: int):
        if not self.checkpointing:
            return fn(cfg, x, p, layer, self)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, cfg, x, p, layer, self, use_reentrant=False)

    def select(self, x):
        return x[self.keep][None]


class Batches:
    """Conversations in a seeded random order, `batch_size` per step, tokenized when first
    drawn; right-padded with `pad_id`. Yields (ids, targets), targets = labels shifted left."""

    def __init__(self, rows, tok, batch_size: int, max_length: int, pad_id: int, seed: int = 0):
        from ..data.sft import as_messages
        from ..hf.finetune import tokenize_conversation

        self.encode = lambda r: tokenize_conversation(tok, as_messages(r), max_length)
        self.rows, self.batch_size, self.pad = rows, batch_size, pad_id
        self.order = np.random.default_rng(seed).permutation(len(rows))
        self.cache: dict[int, dict] = {}
        self.next = 0

    def _row(self, i: int) -> dict:
        if i not in self.cache:
            self.cache[i] = self.encode(self.rows[i])
        return self.cache[i]

    def __next__(self):
        picked = []
        while len(picked) < self.batch_size:
            e = self._row(int(self.order[self.next % len(self.rows)]))
            self.next += 1
            if any(lab != -100 for lab in e["labels"][1:]):  # cut past every answer: skipped
                picked.append(e)
        T = max(len(e["input_ids"]) for e in picked) - 1
        ids = torch.full((len(picked), T), self.pad, dtype=torch.long)
        targets = torch.full((len(picked), T), -100, dtype=torch.long)
        for b, e in enumerate(picked):
            n = len(e["input_ids"]) - 1
            ids[b, :n] = torch.tensor(e["input_ids"][:-1])
            targets[b, :n] = torch.tensor(e["labels"][1:])
        return ids, targets


def train_step(params, cfg, lora, ids, targets, checkpointing: bool = True) -> float:
    """Forward (loss on labelled positions only) and backward; returns the loss."""
    keep = targets != -100
    ctx = _LabelledRows(lora, keep, checkpointing)
    _, loss = forward(params, cfg, ids, targets[keep][None], ctx)
    loss.backward()
    return float(loss.detach())


def peak_rss_mb(reset: bool = False) -> float | None:
    """This process's peak resident memory since start (or the last reset), in MB, from Linux's
    VmHWM; `reset` sets the peak to the current use (clear_refs 5). None elsewhere."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def base_bytes(params: dict) -> int:
    """Bytes of the frozen base as held: float tensors at 4 bytes, NF4 weights at their codes
    and scales; LoRA factors left out."""
    return sum(v.nbytes if not isinstance(v, torch.Tensor) else v.numel() * v.element_size()
               for k, v in params.items() if not k.endswith((".lora_A", ".lora_B")))


def save_peft_adapter(out_dir, params: dict, lora: dict, rank: int, alpha: float,
                      base_model: str = "") -> Path:
    """Write the adapter as PEFT does: `base_model.model.<HF module>.lora_A.weight` (r, in) and
    `.lora_B.weight` (out, r) in adapter_model.safetensors, and adapter_config.json. Atomic:
    the directory appears whole or not at all."""
    from safetensors.torch import save_file

    from ..pretrained.weights import hf_name
    from ..util.paths import atomic_dir

    tensors, modules = {}, set()
    for name in lora:
        module = hf_name(name).removesuffix(".weight")
        modules.add(module.rsplit(".", 1)[1])
        for f in ("A", "B"):
            tensors[f"base_model.model.{module}.lora_{f}.weight"] = \
                params[f"{name}.lora_{f}"].detach().float().contiguous().cpu()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "lora_dropout": 0.0, "target_modules": sorted(modules), "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": base_model}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


def finetune_torch(model: str, rows: list[dict], out: str, *, method: str = "qlora",
                   steps: int = 48, lr: float = 1e-3, batch_size: int = 4, rank: int = 16,
                   alpha: float = 32.0, targets="all-linear", max_length: int = 512,
                   block_size: int = 64, double_quant: bool = False, checkpointing: bool = True,
                   seed: int = 0, progress: bool = True, log=print) -> dict:
    """LoRA or QLoRA on `rows` (conversations) with AdamW, linear warmup then cosine decay to 0,
    gradients clipped at norm 1 (TRL's defaults); the adapter goes to OUT/adapter and the
    figures (trainable share, base bytes, peak memory, time per step, losses) to
    OUT/training.json, and are returned."""
    from ..train import lr_at
    from ..util.paths import atomic_write_text
    from ..util.progress import progress_bar

    for what, v in (("--steps", steps), ("--batch-size", batch_size), ("--max-length", max_length)):
        if v < 1:
            raise UserError(f"{what} must be at least 1, got {v}.")
    if not rows:
        raise UserError("the dataset's training split is empty.")
    layer_targets(targets)  # a wrong name is said before the model loads
    t0 = time.perf_counter()
    cfg, params, tok, eos = load_base(model, method, block_size, double_quant)
    names = target_names(cfg, targets)
    lora = add_lora(params, names, rank, alpha, seed)
    trainable = [params[n + s] for n in names for s in (".lora_A", ".lora_B")]
    n_train = sum(p.numel() for p in trainable)
    n_base = sum(v.numel() if isinstance(v, torch.Tensor) else v.numel
                 for k, v in params.items() if not k.endswith((".lora_A", ".lora_B")))
    weights = base_bytes(params)
    log(f"{method} (torch engine, CPU): {n_train:,} trainable parameters of "
        f"{n_base + n_train:,} ({100 * n_train / (n_base + n_train):.2f} %); frozen base "
        f"{weights / 2**20:.1f} MiB" + (f" in NF4, blocks of {block_size}"
                                         if method == "qlora" else " in float32"))
    batches = Batches(rows, tok, batch_size, max_length, eos if eos is not None else 0, seed)
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warmup, every = max(1, steps // 20), max(1, steps // 20)
    losses, tokens, seen, load_s = [], 0, 0, time.perf_counter() - t0
    load_peak = peak_rss_mb()
    peak_rss_mb(reset=True)  # from here on: the training's own peak
    start = last = time.perf_counter()
    bar = progress_bar(range(steps), desc=method, enabled=progress)
    for step in bar:
        ids, targets = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 0.0, warmup, steps)
        losses.append(train_step(params, cfg, lora, ids, targets, checkpointing))
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens, seen = tokens + int((targets != -100).sum()), seen + ids.numel()
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            now = time.perf_counter()
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-every:]):.4f}, "
                f"{seen / (now - last):,.0f} tokens/s")
            last, seen = now, 0
    seconds = time.perf_counter() - start
    adapter = save_peft_adapter(Path(out) / "adapter", params, lora, rank, alpha, model)
    quantized = sum(not isinstance(v, torch.Tensor) for v in params.values())
    result = {"method": method, "engine": "torch", "trainable_params": n_train,
              "total_params": n_base + n_train, "trainable_share": n_train / (n_base + n_train),
              "base_weight_bytes": weights, "nf4_matrices": quantized,
              "steps": steps, "batch_size": batch_size, "checkpointing": checkpointing,
              "load_seconds": round(load_s, 2),
              "seconds": round(seconds, 2), "seconds_per_step": round(seconds / steps, 3),
              "first_loss": losses[0], "final_loss": float(np.mean(losses[-every:])),
              "losses": [round(x, 5) for x in losses], "labelled_tokens": tokens,
              "peak_rss_load_mb": load_peak, "peak_rss_train_mb": peak_rss_mb(),
              "output": str(adapter)}
    atomic_write_text(Path(out) / "training.json", json.dumps(result, indent=2) + "\n")
    log(f"adapter saved to {adapter}; loss {losses[0]:.4f} -> {result['final_loss']:.4f} in "
        f"{seconds:.0f} s ({seconds / steps:.2f} s/step)")
    return result
