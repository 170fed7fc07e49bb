"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: full, LoRA (and QLoRA where
bitsandbytes and a GPU are present), prompt tuning and prefix tuning.

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


METHODS = ("full", "lora", "qlora", "prompt", "prefix")
VIRTUAL = ("prompt", "prefix")  # the methods that learn virtual tokens
# Peak learning rates (AdamW, cosine): prompt and prefix tuning move a few thousand numbers that
# must do the work of millions, and need larger steps than LoRA (docs/finetuning.md).
DEFAULT_LR = {"full": 2e-5, "lora": 1e-3, "qlora": 1e-3, "prompt": 3e-2, "prefix": 1e-2}
NUM_VIRTUAL_TOKENS = 20
# Both virtual-token methods start from this text: prompt tuning from its token embeddings
# (PEFT's TEXT init), prefix tuning from the keys and values the model computes for it.
INIT_TEXT = "Read the request. If a tool can answer it, call the tool with the right arguments."


def check_method(method: str, num_virtual_tokens: int | None = None, init: str = "text"):
    """None, or the 4-bit quantization config QLoRA loads the model with; refuses clearly what
    cannot run here."""
    import torch

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got '{method}'.")
    if num_virtual_tokens is not None and method not in VIRTUAL:
        raise UserError("--num-virtual-tokens is for --method prompt or prefix.")
    if num_virtual_tokens is not None and num_virtual_tokens < 1:
        raise UserError(f"--num-virtual-tokens must be at least 1, got {num_virtual_tokens}.")
    if init not in ("text", "random"):
        raise UserError(f"--init must be text or random, got '{init}'.")
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


def virtual_token_config(method: str, n: int = NUM_VIRTUAL_TOKENS, init: str = "text",
                         tokenizer_path: str | None = None, text: str = INIT_TEXT):
    """PEFT's PromptTuningConfig or PrefixTuningConfig with n virtual tokens. Prompt
    tuning with init "text" starts from the embeddings of `text`'s tokens (repeated or cut to n;
    PEFT loads the tokenizer from `tokenizer_path`); prefix tuning has no reparameterisation MLP
    (the prefix itself is trained) and is given its text start by init_prefix_from_text."""
    from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    if method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    if init == "random":
        return PromptTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    return PromptTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM",
                              prompt_tuning_init=PromptTuningInit.TEXT,
                              prompt_tuning_init_text=text, tokenizer_name_or_path=tokenizer_path)


def prefix_as_cache(peft_model):
    """The prefix of a PEFT prefix-tuning model as a transformers DynamicCache (batch 1): PEFT
    stores it as one row per virtual token, laid out (layer, key|value, kv head, head_dim)."""
    from transformers import DynamicCache

    cfg = peft_model.active_peft_config
    w = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
    h = cfg.num_attention_heads  # PEFT's name; for a GQA model it holds the KV heads
    kv = w.view(cfg.num_virtual_tokens, cfg.num_layers, 2, h, cfg.token_dim // h)
    kv = kv.permute(1, 2, 3, 0, 4).unsqueeze(2)  # layer, k|v, batch 1, head, token, head_dim
    return DynamicCache(ddp_cache_data=[(layer[0], layer[1]) for layer in kv])


def set_prefix(peft_model, cache) -> None:
    """Write a KV cache of num_virtual_tokens positions (batch 1) into the PEFT prefix."""
    import torch

    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]])
                      for layer in cache.layers])  # layer, k|v, head, token, head_dim
    w = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
    with torch.no_grad():
        w.copy_(kv.permute(3, 0, 1, 2, 4).reshape(w.shape))


def init_prefix_from_text(peft_model, tok, text: str = INIT_TEXT) -> None:
    """Set the prefix to the keys and values the base model computes for `text` (its tokens
    repeated or cut to the number of virtual tokens): training starts from a real context, as Li
    & Liang initialise it, where random keys and values wreck the model's output."""
    import torch

    n = peft_model.active_peft_config.num_virtual_tokens
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (n // len(ids) + 1))[:n]
    with torch.no_grad():
        cache = peft_model.get_base_model()(input_ids=torch.tensor([ids]),
                                            use_cache=True).past_key_values
    set_prefix(peft_model, cache)


def finetune(model: str, rows: list[dict], out: str, *, method: str = "lora", steps: int = 48,
             lr: float | None = None, batch_size: int = 4, rank: int = 16, alpha: float = 32.0,
             dropout: float = 0.0, targets="all-linear", max_length: int = 512,
             num_virtual_tokens: int | None = None, init: str = "text",
             resume: bool = False, merge_out: str | None = None, seed: int = 0,
             progress: bool = True, log=print) -> dict:
    quant = check_method(method, num_virtual_tokens, init)
    if merge_out and method in VIRTUAL:
        raise UserError(f"--merge folds LoRA into the weights; a {method}-tuning adapter adds "
                        "virtual tokens and has nothing to fold (use it with --adapter).")
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ..data.sft import as_messages
    from ..util.paths import atomic_dir
    from .models import from_pretrained, save_model

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
    elif method in VIRTUAL:
        from peft import get_peft_model

        from .models import hf_dir

        torch.manual_seed(seed)  # the random init, when asked for
        m = get_peft_model(m, virtual_token_config(method, num_virtual_tokens or
                                                   NUM_VIRTUAL_TOKENS, init, hf_dir(model)))
        if method == "prefix" and init == "text":
            init_prefix_from_text(m, tok)
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr or DEFAULT_LR[method], lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), logging_steps=max(1, steps // 20),
        save_steps=max(10, steps // 4), save_total_limit=1, report_to="none", seed=seed,
        bf16=cuda, use_cpu=not cuda, packing=False, max_length=max_length,
        # a checkpointed layer runs twice, and each run would append to the prefix's cache
        gradient_checkpointing=method != "prefix",
        disable_tqdm=not (progress and sys.stderr.isatty()), dataloader_num_workers=0)
    trainer = SFTTrainer(model=m, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft_config, callbacks=[_throughput_callback(log)])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    log(f"{method}: {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / total:.2f} %)")
    has_ckpt = any(Path(out).glob("checkpoint-*")) if Path(out).is_dir() else False
    result = trainer.train(resume_from_checkpoint=True if (resume and has_ckpt) else None)
    adapter = peft_config is not None or method in VIRTUAL
    final = Path(out) / ("adapter" if adapter else "model")
    if trainer.is_world_process_zero():
        if adapter:
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
