"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: full, LoRA (and QLoRA where
bitsandbytes and a GPU are present).

Loss on the assistant's turns only: conversations are tokenized here, turn by turn through the
model's own chat template, and every token outside an assistant turn gets the label -100. The
trainer receives `input_ids` and `labels` (TRL leaves a dataset that has labels as it is), so the
masking is explicit and works for any template, including SmolLM2's, which has no generation
markers for TRL's `assistant_only_loss`.
"""

from __future__ import annotations

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


def finetune(model: str, rows: list[dict], out: str, *, method: str = "lora", steps: int = 100,
             lr: float | None = None, batch_size: int = 8, rank: int = 16, alpha: float = 32.0,
             dropout: float = 0.0, targets="all-linear", max_length: int = 512,
             resume: bool = False, merge_out: str | None = None, seed: int = 0,
             progress: bool = True, log=print) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .models import hf_dir

    if method not in ("full", "lora", "qlora"):
        raise UserError(f"--method must be full, lora or qlora, got '{method}'.")
    cuda = torch.cuda.is_available()
    quant = None
    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("--method qlora needs bitsandbytes (pip install bitsandbytes) and a "
                            "CUDA GPU; use --method lora on this machine.") from None
        if not cuda:
            raise UserError("--method qlora needs a CUDA GPU (4-bit kernels); this machine has "
                            "none, use --method lora.")
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    path = hf_dir(model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    m = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if cuda else torch.float32, quantization_config=quant)
    data = Dataset.from_list([tokenize_conversation(tok, r["messages"], max_length) for r in rows])
    peft_config = None
    if method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                 target_modules=targets if targets == "all-linear" else list(targets),
                                 task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr or (2e-4 if method != "full" else 2e-5), lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), logging_steps=max(1, steps // 20),
        save_steps=max(10, steps // 4), save_total_limit=1, report_to="none", seed=seed,
        bf16=cuda, use_cpu=not cuda, packing=False, max_length=max_length,
        disable_tqdm=not progress, dataloader_num_workers=0, gradient_checkpointing=False)
    trainer = SFTTrainer(model=m, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft_config)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    log(f"{method}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f} %)")
    has_ckpt = any(Path(out).glob("checkpoint-*")) if Path(out).is_dir() else False
    result = trainer.train(resume_from_checkpoint=True if (resume and has_ckpt) else None)
    final = Path(out) / ("adapter" if peft_config else "model")
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    if merge_out and peft_config is not None:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(merge_out)
        tok.save_pretrained(merge_out)
    size = sum(f.stat().st_size for f in final.glob("*.safetensors"))
    return {"method": method, "trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total, "train_loss": result.training_loss,
            "seconds": result.metrics.get("train_runtime"), "output": str(final),
            "weights_bytes": size}
