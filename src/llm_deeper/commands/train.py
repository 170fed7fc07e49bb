"""`llm-deeper train`: train a model from scratch, and the jobs behind it as functions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

HELP = "train a model from scratch"

# TrainConfig's fields the command line can set; None (not given) keeps TrainConfig's default,
# written in the help (tests/test_cli.py checks these against llm_deeper.train.TrainConfig).
TRAIN_OPTIONS = (
    ("batch-size", int, "windows per micro-batch, per process under torchrun", 12),
    ("grad-accum", int, "micro-batches per optimizer step", 1),
    ("lr", float, "peak learning rate, after warmup", 1e-3),
    ("min-lr", float, "learning rate at the end of the cosine decay", 1e-4),
    ("warmup", int, "steps of linear warmup", 100),
    ("weight-decay", float, "AdamW weight decay", 0.1),
    ("grad-clip", float, "clip the gradient norm to this (0: no clipping)", 1.0),
    ("eval-interval", int, "steps between validation estimates", 250),
    ("eval-iters", int, "batches per validation estimate", 20),
    ("seed", int, "seed of the initialisation and the batches", 1337),
)
MODEL_OPTIONS = (
    ("context-length", int, "tokens the model sees at once"),
    ("n-layer", int, "transformer blocks"),
    ("n-head", int, "attention heads"),
    ("n-kv-head", int, "key/value heads (fewer than --n-head: GQA; 1: MQA)"),
    ("d-model", int, "width of the residual stream"),
    ("d-ff", int, "hidden width of the MLP"),
    ("dropout", float, "dropout probability while training"),
    ("norm", str, "layernorm or rmsnorm"),
    ("activation", str, "gelu, relu or swiglu"),
    ("position", str, "learned, sinusoidal, rope, alibi or none"),
)


def add_arguments(p) -> None:
    p.add_argument("--engine", choices=["numpy", "torch"], default="numpy",
                   help="numpy: hand-written backward pass; torch: autograd, GPUs, torchrun")
    p.add_argument("--preset", default="baby",
                   help="the model's shape: tinygpt, baby, small, medium, large, ... "
                   "(see `llm-deeper presets`)")
    p.add_argument("--data", default="works", help="works, a title (sonnets) or a text file")
    p.add_argument("--tokenizer", default="char",
                   help="char, bpe:N (train byte-level BPE with N ids), or a tokenizer.json")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimizer steps in all (with --resume: the new total)")
    p.add_argument("--out", default=None,
                   help="checkpoint directory (default: runs/<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out, with its model, tokenizer and settings")
    p.add_argument("--device", default="cpu", help="torch engine: cpu, cuda, cuda:1, mps")
    p.add_argument("--compile", action="store_true", help="torch engine: torch.compile the model")
    for name, typ, help_, default in TRAIN_OPTIONS:
        p.add_argument(f"--{name}", type=typ, default=None,
                       help=f"{help_} (default: {default}; with --resume: the run's)")
    for name, typ, help_ in MODEL_OPTIONS:
        p.add_argument(f"--{name}", type=typ, default=None,
                       help=f"{help_} (default: the preset's)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar, only the log lines")


def run(args) -> int:
    overrides = {k: getattr(args, k) for k in ("context_length", "n_layer", "n_head", "n_kv_head",
                                               "d_model", "d_ff", "dropout", "norm",
                                               "activation", "position")
                 if getattr(args, k) is not None}
    train_over = {k: getattr(args, k) for k in ("batch_size", "grad_accum", "lr", "min_lr",
                                                "warmup", "weight_decay", "grad_clip",
                                                "eval_interval", "eval_iters", "seed")
                  if getattr(args, k) is not None}
    r = train_run(preset_name=args.preset, data=args.data, tokenizer=args.tokenizer,
                  out=args.out or f"runs/{args.preset}", steps=args.steps, resume=args.resume,
                  overrides=overrides, train_overrides=train_over,
                  progress=not args.no_progress, engine=args.engine, device=args.device,
                  compile=args.compile)
    summary = {k: r[k] for k in ("step", "train_loss", "val_loss", "tokens_per_s", "seconds",
                                 "interrupted", "out")}
    if r.get("world_size", 1) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps(summary))
    return 130 if r["interrupted"] else 0


def make_tokenizer(spec: str, text: str):
    """'char', 'bpe:N' (train byte-level BPE with N ids on the text) or a tokenizer path."""
    from ..tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

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


def encode_corpus(tokenizer, text: str):
    """The text as a NumPy int64 array of token ids."""
    import numpy as np

    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def train_run(*, preset_name: str = "baby", data: str = "works", tokenizer: str = "char",
              out: str = "runs/baby", steps: int = 2000, resume: bool = False,
              overrides: dict | None = None, train_overrides: dict | None = None,
              progress: bool = True, log=print, engine: str = "numpy", device: str = "cpu",
              compile: bool = False) -> dict:
    """Train (or with resume=True continue) a run in `out`; prints what a learner needs and
    returns train()'s figures plus model, tokenizer and out."""
    from ..checkpoint import load_checkpoint
    from ..config import preset
    from ..data import load_text, split_train_val
    from ..params import init_params
    from ..train import TrainConfig, train

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
        from ..torch_engine.model import TorchGPT
        from ..torch_engine.train import TorchTrainer

        trainer = TorchTrainer(TorchGPT(cfg, init_params(cfg, tc.seed)), device=device,
                               compile=compile)
    elif engine == "numpy":
        from ..numpy_engine.model import GPT
        from ..numpy_engine.train import NumpyTrainer

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
