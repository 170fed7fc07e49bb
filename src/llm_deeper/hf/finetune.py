"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: full, LoRA (and QLoRA where
bitsandbytes and a GPU are present).

Loss on the assistant's turns only: conversations are tokenized here, turn by turn through the
model's own chat template, and every token outside an assistant turn gets the label -100. The
trainer receives `input_ids` and `labels` (TRL leaves a dataset that has labels as it is), so the
masking is explicit and works for any template, including SmolLM2's, which has no generation
markers for TRL's `assistant_only_loss`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError


def tokenize_conversation(tok, messages: list[dict], max_length: int) -> dict:
    """input_ids of the rendered conversation; labels = ids on assistant turns, -100 elsewhere."""
    ids, labels, prev = [], [], ""
    for i, m in enumerate(messages):
        text = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if m["role"] == "assistant":
            head = tok.apply_chat_template(messages[:i], tokenize=False,
                                           add_generation_prompt=True) if i else ""
            if not head.startswith(prev) or not text.startswith(head):
                raise UserError("the chat template does not render conversations incrementally; "
                                "assistant-only loss cannot be located.")
            seg_prompt = tok(head[len(prev):], add_special_tokens=False)["input_ids"]
            seg_answer = tok(text[len(head):], add_special_tokens=False)["input_ids"]
            ids += seg_prompt + seg_answer
            labels += [-100] * len(seg_prompt) + seg_answer
        else:
            seg = tok(text[len(prev):], add_special_tokens=False)["input_ids"]
            ids += seg
            labels += [-100] * len(seg)
        prev = text
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _throughput_callback(log):
    """Prints step, loss and training tokens/s at each logging step (rank 0 only)."""
    import time

    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = (time.perf_counter(), None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now, tokens = time.perf_counter(), float(logs.get("num_tokens", 0))
            t0, n0 = self.last
            rate = "" if n0 is None else f", {(tokens - n0) / (now - t0):,.0f} tokens/s"
            self.last = (now, tokens)
            log(f"step {state.global_step}/{state.max_steps}: loss {float(logs['loss']):.4f}"
                f"{rate}")

    return Throughput()


def check_method(method: str):
    """None, or the 4-bit quantization config QLoRA loads the model with; refuses clearly what
    cannot run here."""
    import torch

    if method not in ("full", "lora", "qlora"):
        raise UserError(f"--method must be full, lora or qlora, got '{method}'.")
    if method != "qlora":
        return None
    try:
        import bitsandbytes  # noqa: F401 (only: is it installed?)
    except ImportError:
        raise UserError("--method qlora needs bitsandbytes (pip install bitsandbytes) and a "
                        "CUDA GPU; use --method lora on this machine.") from None
    if not torch.cuda.is_available():
        raise UserError("--method qlora needs a CUDA GPU (4-bit kernels); this machine has "
                        "none, use --method lora.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def finetune(model: str, rows: list[dict], out: str, *, method: str = "lora", steps: int = 48,
             lr: float | None = None, batch_size: int = 4, rank: int = 16, alpha: float = 32.0,
             dropout: float = 0.0, targets="all-linear", max_length: int = 512,
             resume: bool = False, merge_out: str | None = None, seed: int = 0,
             progress: bool = True, log=print) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ..data.sft import as_messages
    from ..util.paths import atomic_dir
    from .models import from_pretrained, save_model

    quant = check_method(method)
    cuda = torch.cuda.is_available()
    if not rows:
        raise UserError("the dataset's training split is empty.")
    tok, m = from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32,
                             quantization_config=quant)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    encoded = [tokenize_conversation(tok, as_messages(r), max_length) for r in rows]
    if not any(any(lab != -100 for lab in e["labels"]) for e in encoded):
        raise UserError(f"no conversation has an assistant turn within the first {max_length} "
                        "tokens; raise --max-length (or check that the rows have assistant "
                        "turns).")
    data = Dataset.from_list(encoded)
    peft_config = None
    if method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                 target_modules=targets if targets == "all-linear"
                                 else list(targets),
                                 task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr or (1e-3 if method != "full" else 2e-5), lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), logging_steps=max(1, steps // 20),
        save_steps=max(10, steps // 4), save_total_limit=1, report_to="none", seed=seed,
        bf16=cuda, use_cpu=not cuda, packing=False, max_length=max_length,
        disable_tqdm=not (progress and sys.stderr.isatty()), dataloader_num_workers=0)
    trainer = SFTTrainer(model=m, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft_config, callbacks=[_throughput_callback(log)])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    log(f"{method}: {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / total:.2f} %)")
    has_ckpt = any(Path(out).glob("checkpoint-*")) if Path(out).is_dir() else False
    result = trainer.train(resume_from_checkpoint=True if (resume and has_ckpt) else None)
    final = Path(out) / ("adapter" if peft_config else "model")
    if trainer.is_world_process_zero():
        if peft_config:
            with atomic_dir(final) as tmp:
                trainer.model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
        else:
            save_model(trainer.model, tok, final)
        if merge_out and peft_config is not None:
            save_model(trainer.model.merge_and_unload(), tok, merge_out)
    size = sum(f.stat().st_size for f in final.glob("*.safetensors"))
    return {"method": method, "trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total, "train_loss": result.training_loss,
            "seconds": result.metrics.get("train_runtime"), "output": str(final),
            "world_size": trainer.args.world_size,
            "global_batch_size": batch_size * trainer.args.world_size,
            "weights_bytes": size}
