"""`llm-deeper train`: train a model from scratch, and the jobs behind it as functions.

`--resume` continues the run in --out exactly where it stopped, so the run keeps what it was
trained with, and an option that would change it is refused (one sentence, exit 2, nothing
written) rather than silently ignored:

* the architecture (--preset, --context-length, --n-layer, --n-head, --n-kv-head, --d-model,
  --d-ff, --dropout, --norm, --activation, --position) and --tokenizer: the checkpoint's. A value
  given that equals the checkpoint's is fine (the training command line repeated with --resume
  works); another is refused. --preset is compared by name where the checkpoint records it, and
  otherwise (checkpoints from before it was recorded) by the shape it gives.
* --data: the checkpoint's (recorded since this version as its name or absolute path and the
  text's SHA-256, so leaving --data out resumes on it); another text is refused. A checkpoint
  that does not record its data resumes on --data, `works` if not given.
* --data-size: the run's (recorded as the tokens trained on; none: the whole training split);
  another is refused.
* --engine: the checkpoint's (trainer_state.json says which trained it), and another is
  refused: every engine reads the checkpoint, but resume is bit-exact only within one engine
  (each keeps its own dropout RNG state and rounds its float32 sums its own way).
* training settings (--batch-size, --grad-accum, --lr, --min-lr, --warmup, --weight-decay,
  --grad-clip, --seed): the run's; another value is refused, since it would change the run.
* --steps is the new total (more than the run's step); --eval-interval and --eval-iters (only
  when the validation loss is measured and a checkpoint written), --device, --compile and
  --no-progress may change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

from ..engines import ENGINES
from ..errors import UserError
from ..scaling import parse_data_size, resolve_data_size

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


# Defaults of the options that --resume takes from the checkpoint instead (so those options
# default to None, and "given" means given).
DEFAULTS = {"engine": "numpy", "preset": "baby", "data": "works", "tokenizer": "char"}
# What a resume may change; everything else it keeps, refusing a different value.
RESUME_MAY_CHANGE = ("steps", "eval_interval", "eval_iters", "device", "compile", "no_progress")


def add_arguments(p) -> None:
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="numpy: hand-written backward pass; torch: autograd, GPUs, torchrun; "
                   "mlx: Apple's MLX (GPU on Apple silicon, mlx[cpu] on Linux) "
                   "(default: numpy; with --resume: the run's)")
    p.add_argument("--preset", default=None,
                   help="the model's shape: tinygpt, tiny, baby, small, medium, large, ... "
                   "(see `llm-deeper presets`) (default: baby; with --resume: the run's)")
    p.add_argument("--data", default=None,
                   help="works, a title (sonnets) or a text file (default: works; with "
                   "--resume: the run's)")
    p.add_argument("--data-size", default=None,
                   help="train on only the first N tokens (characters with --tokenizer char) of "
                   "the training split: 50000, 200k, 1.5M or a share, 25%%; the validation "
                   "text stays the same (default: all; with --resume: the run's)")
    p.add_argument("--tokenizer", default=None,
                   help="char, bpe:N (train byte-level BPE with N ids), or a tokenizer.json "
                   "(default: char; with --resume: the run's)")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimizer steps in all (with --resume: the new total)")
    p.add_argument("--out", default=None,
                   help="checkpoint directory (default: runs/<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly, with its model, tokenizer, data, "
                   "engine and training settings: a different --preset, model option, "
                   "--tokenizer, --data, --data-size, --engine or training setting is refused "
                   "(the same value is fine); only --steps (the new total), --eval-interval, "
                   "--eval-iters, --device, --compile and --no-progress may change")
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
    out = args.out or f"runs/{args.preset or DEFAULTS['preset']}"
    r = train_run(preset_name=args.preset, data=args.data, tokenizer=args.tokenizer,
                  out=out, steps=args.steps, resume=args.resume,
                  overrides=overrides, train_overrides=train_over,
                  progress=not args.no_progress, engine=args.engine, device=args.device,
                  compile=args.compile, data_size=args.data_size)
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
        return BPETokenizer.train(text, _bpe_size(spec), "gpt4", ["<|endoftext|>"], progress=True)
    return load_tokenizer(spec)


def encode_corpus(tokenizer, text: str):
    """The text as a NumPy int64 array of token ids."""
    import numpy as np

    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def train_run(*, preset_name: str | None = None, data: str | None = None,
              tokenizer: str | None = None, out: str = "runs/baby", steps: int = 2000,
              resume: bool = False, overrides: dict | None = None,
              train_overrides: dict | None = None, progress: bool = True, log=print,
              engine: str | None = None, device: str = "cpu", compile: bool = False,
              data_size: int | str | None = None) -> dict:
    """Train (or with resume=True continue) a run in `out`; prints what a learner needs and
    returns train()'s figures plus model, tokenizer and out.

    preset_name, data, tokenizer, engine, data_size: None means the default (DEFAULTS, all of
    the training split) for a new run and the checkpoint's for a resumed one, which refuses any
    value, override or train override that differs from the run's (module docstring)."""
    from ..checkpoint import load_checkpoint
    from ..config import preset
    from ..data import load_text, split_train_val
    from ..engines import make_trainer
    from ..train import TrainConfig, train

    parse_data_size(data_size)  # a malformed --data-size is refused before any work
    out_dir = Path(out)
    ck = None
    if resume:
        ck = load_checkpoint(out_dir)  # read once: config, tokenizer, state, weights
        if ck.tokenizer is None:
            raise UserError(f"{out_dir} has no tokenizer.json; it cannot be resumed.")
        if not ck.state:
            raise UserError(f"{out_dir} has no trainer_state.json to resume from.")
        cfg, tok = ck.config, ck.tokenizer
        engine, tc = check_resume(out_dir, ck, preset_name=preset_name, tokenizer=tokenizer,
                                  engine=engine, steps=steps, overrides=overrides or {},
                                  train_overrides=train_overrides or {})
        data, text = resume_data(out_dir, ck.state, data, log)
        recorded = ck.state
    else:
        if (out_dir / "trainer_state.json").exists():
            raise UserError(f"{out_dir} already holds a training run; pass --resume to continue "
                            "it or --out to start a new one (nothing was overwritten).")
        preset_name = preset_name or DEFAULTS["preset"]
        data, tokenizer = data or DEFAULTS["data"], tokenizer or DEFAULTS["tokenizer"]
        engine = engine or DEFAULTS["engine"]
        text = load_text(data)
        tok = make_tokenizer(tokenizer, text)
        cfg = preset(preset_name, **{"vocab_size": tok.vocab_size, **(overrides or {})})
        tc = TrainConfig(steps=steps, **(train_overrides or {}))
        recorded = {}
    # What a later resume compares its options with (trainer_state.json); kept from the
    # checkpoint where it recorded them, else what this call was given.
    extra_state = {"preset": recorded.get("preset", preset_name),
                   "tokenizer": recorded.get("tokenizer", tokenizer),
                   "data": data_id(data), "data_sha256": text_sha256(text)}
    extra_state = {k: v for k, v in extra_state.items() if v is not None}
    ids = encode_corpus(tok, text)
    train_ids, val_ids = split_train_val(ids)
    n_data = resolve_data_size(data_size, len(train_ids), data)  # None: the whole split
    if resume and data_size is not None and n_data != recorded.get("data_size"):
        _refuse(out_dir, f"was trained on {recorded.get('data_size') or len(train_ids):,} "
                f"tokens of its training split, not {n_data or len(train_ids):,}", "data-size",
                "data")
    n_data = recorded.get("data_size") if resume else n_data
    train_ids = train_ids[:n_data]
    extra_state.update({"data_size": n_data} if n_data else {})
    for name, part in (("training split", train_ids), ("validation split", val_ids)):
        if len(part) < cfg.context_length + 1:
            raise UserError(f"the {name} of '{data}' has {len(part)} tokens, fewer than "
                            f"context_length + 1 = {cfg.context_length + 1}; use more text or "
                            "a smaller --context-length.")
    trainer = make_trainer(engine, cfg, tc.seed, device=device, compile=compile)
    if trainer.rank == 0:
        log(f"model: {cfg.n_params():,} parameters ({cfg.n_layer} layers, d_model "
            f"{cfg.d_model}, {cfg.n_head} heads / {cfg.n_kv_head} kv, {cfg.norm}, "
            f"{cfg.activation}, {cfg.position} positions); data: {data}, {len(train_ids):,} "
            f"train / {len(val_ids):,} val tokens ({tok.kind}, vocab {tok.vocab_size})")
    result = train(trainer, tok, train_ids, val_ids, tc, out_dir, resume=ck or False,
                   progress=progress, log=log, extra_state=extra_state)
    result.update(model=trainer.model, tokenizer=tok, out=str(out_dir))
    return result


# --- resume: what the run keeps ----------------------------------------------------------------

def _refuse(out_dir, has: str, option: str, keeps: str) -> NoReturn:
    raise UserError(f"the checkpoint in {out_dir} {has}; a resumed run keeps its {keeps}: drop "
                    f"--{option} or start a new --out.")


def check_resume(out_dir, ck, *, preset_name, tokenizer, engine, steps: int, overrides: dict,
                 train_overrides: dict):
    """Refuse (UserError) an option that differs from the checkpoint's run; return the engine
    and TrainConfig the resumed run uses. Reads and writes nothing."""
    import dataclasses

    from ..config import preset
    from ..train import TrainConfig

    cfg, state = ck.config, ck.state
    for key, value in overrides.items():
        if getattr(cfg, key) != value:
            _refuse(out_dir, f"has {key} {getattr(cfg, key)}, not {value}",
                    key.replace("_", "-"), "architecture")
    if preset_name is not None:
        if "preset" in state:
            if preset_name != state["preset"]:
                _refuse(out_dir, f"was trained with --preset {state['preset']}, not "
                        f"{preset_name}", "preset", "architecture")
        else:  # written before the preset was recorded: compare the shape it gives
            given = preset(preset_name, **{"vocab_size": cfg.vocab_size, **overrides})
            for f in dataclasses.fields(cfg):
                ours, theirs = getattr(cfg, f.name), getattr(given, f.name)
                if ours != theirs:
                    _refuse(out_dir, f"has {f.name} {ours} where --preset {preset_name} has "
                            f"{theirs}", "preset", "architecture")
    if tokenizer is not None and not tokenizer_matches(tokenizer, ck.tokenizer, state):
        tok = ck.tokenizer
        what = state.get("tokenizer") or f"a {tok.kind} tokenizer of {tok.vocab_size} ids"
        _refuse(out_dir, f"has the tokenizer {what}, not {tokenizer}", "tokenizer", "tokenizer")
    run_engine = state.get("engine", DEFAULTS["engine"])
    if engine is not None and engine != run_engine:
        _refuse(out_dir, f"was trained by the {run_engine} engine, not {engine}", "engine",
                "engine (resume is exact only within one engine)")
    tc = TrainConfig(**{**state.get("train_config", {}), "steps": steps})
    for key, value in train_overrides.items():
        if key in RESUME_MAY_CHANGE:
            setattr(tc, key, value)
        elif getattr(tc, key) != value:
            _refuse(out_dir, f"was trained with {key.replace('_', '-')} {getattr(tc, key)}, "
                    f"not {value}", key.replace("_", "-"),
                    "training settings, so that it continues exactly (only --steps, "
                    "--eval-interval and --eval-iters may change)")
    step = int(state.get("step", 0))
    if steps <= step:
        raise UserError(f"the run in {out_dir} is already at step {step}; with --resume, "
                        f"--steps is the new total: pass more than {step}.")
    return run_engine, tc


def tokenizer_matches(spec: str, tok, state: dict) -> bool:
    """Whether the --tokenizer spec describes the checkpoint's tokenizer."""
    if spec == state.get("tokenizer"):
        return True
    if spec == "char":
        return tok.kind == "char"
    if spec.startswith("bpe:"):
        return tok.kind == "bpe" and tok.vocab_size == _bpe_size(spec)
    from ..tokenizers import load_tokenizer

    return load_tokenizer(spec).to_json() == tok.to_json()


def resume_data(out_dir, state: dict, data: str | None, log) -> tuple[str, str]:
    """The data a resumed run trains on and its text: the checkpoint's, or `data` where it
    names the same text; refused where it names another."""
    from ..data import load_text

    if "data" not in state:  # written before the data was recorded: take the caller's word
        if data is None:
            data = DEFAULTS["data"]
            if int(os.environ.get("RANK", "0")) == 0:
                    log(f"{out_dir} does not record its data; resuming on {data} (pass --data "
                    "to choose).")
        return data, load_text(data)
    if data is None:
        return state["data"], load_text(state["data"])
    text = load_text(data)
    if data_id(data) != state["data"] and text_sha256(text) != state.get("data_sha256"):
        _refuse(out_dir, f"was trained on {state['data']}, not {data}", "data", "data")
    return data, text


def data_id(data: str) -> str:
    """What a checkpoint records of its data: `works`, a title, or a file's absolute path."""
    if data in ("works", "shakespeare"):
        return "works"
    path = Path(data).expanduser()
    return str(path.resolve()) if path.is_file() else data


def text_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bpe_size(spec: str) -> int:
    try:
        return int(spec[4:])
    except ValueError:
        raise UserError(f"--tokenizer {spec}: write bpe:N with N the vocabulary size, "
                        "e.g. bpe:1024.") from None
