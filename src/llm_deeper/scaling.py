"""Scaling: validation loss against model size and data size, measured with the one training loop.

Kaplan et al. (2020) found that a language model's loss falls as a power law in its parameters N
(with enough data) and in its training tokens D (with a big enough model), L(N) ~ (N_c / N)^a,
L(D) ~ (D_c / D)^b, until one of them runs short; Hoffmann et al. (2022, Chinchilla) that at a
fixed compute C ~ 6 N D the best model spends it on ~20 tokens per parameter. A sweep measures
both on a small scale: every (model size, data size) pair trains for the same number of steps
(so the same tokens D and the same compute 6 N D per model), on the first `data_size` tokens of
the training split, and is evaluated on the same held-out text. Data smaller than the tokens a
run reads is repeated (epochs > 1), which is where overfitting shows: the training loss keeps
falling while the validation loss turns up.

`train --data-size` (commands/train.py) takes the first N tokens of the training split; the
sweep (`llm-deeper scaling sweep`, commands/scaling.py) runs `train_run` once per pair, each into
its own checkpoint directory, and keeps results.json beside them. This module is what both
share and what reads the results: the --data-size forms, the sweep's settings, a run's record,
the table and the claims a sweep checks (`findings`). docs/scaling.md has the measured sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

_UNITS = {"k": 10 ** 3, "m": 10 ** 6}
_FORMS = "a token count (50000, 200k, 1.5M), a share of the training split (25%) or all"


def parse_data_size(spec) -> int | float | None:
    """A --data-size: '50000', '200k', '1.5M' -> tokens (int); '25%' -> a fraction in (0, 1];
    None, 'all' or '100%' -> None (the whole training split). Refuses anything else."""
    if spec is None or isinstance(spec, int) and not isinstance(spec, bool) and spec > 0:
        return spec
    s = str(spec).strip().lower().replace("_", "").replace(",", "")
    if s in ("all", "100%"):
        return None
    try:
        if s.endswith("%"):
            share = float(s[:-1]) / 100
            if not 0 < share <= 1:
                raise UserError(f"--data-size {spec}: a share of the training split must be "
                                "more than 0% and at most 100%.")
            return share
        unit = _UNITS.get(s[-1:], 1)
        n = float(s[:-1] if unit > 1 else s) * unit
    except ValueError:
        raise UserError(f"--data-size {spec}: write {_FORMS}.") from None
    if not (n > 0 and n == int(n)):
        raise UserError(f"--data-size {spec}: the number of tokens must be a positive whole "
                        "number.")
    return int(n)


def resolve_data_size(spec, n_train: int, data: str = "the data") -> int | None:
    """The tokens a --data-size trains on, out of a training split of n_train: None for the
    whole split (also when the count equals it); refused when more than the split."""
    v = parse_data_size(spec)
    if v is None:
        return None
    n = max(1, round(v * n_train)) if isinstance(v, float) else v
    if n > n_train:
        raise UserError(f"--data-size {spec} is more than the training split of {data} "
                        f"({n_train:,} tokens): pass at most {n_train:,} or all.")
    return None if n == n_train else n


def label(n: int, n_train: int) -> str:
    """A data size as the sweep names it: 20k, 1.5M, all."""
    if n >= n_train:
        return "all"
    for suffix, unit in (("M", 10 ** 6), ("k", 10 ** 3)):
        if n >= unit and n % (unit // 100) == 0:
            return f"{n / unit:g}{suffix}"
    return str(n)


@dataclass
class SweepSettings:
    """What every run of a sweep shares; a sweep's --out keeps one set of them."""

    steps: int = 1000
    context_length: int = 128
    batch_size: int = 12
    lr: float = 2e-3
    warmup: int = 50
    eval_interval: int = 100
    eval_iters: int = 20
    seed: int = 1337
    engine: str = "numpy"
    data: str = "works"

    @property
    def tokens(self) -> int:
        """Tokens each run reads: steps x batch x context."""
        return self.steps * self.batch_size * self.context_length


def record(size: str, cfg, n_data: int, st: SweepSettings, history: dict, seconds: float,
           n_train: int) -> dict:
    """One run's line in results.json, from its loss history. train_loss: the mean batch loss
    over the last evaluation interval; val_loss: the final estimate (final_eval_iters batches);
    curve: [step, mean training loss since the last evaluation, validation loss]."""
    from . import sizing

    train, val = history["train"], history["val"]
    curve, i = [], 0
    for step, v in val:
        chunk = [loss for s, loss in train[i:] if s <= step]
        i += len(chunk)
        curve.append([step, round(sum(chunk) / max(len(chunk), 1), 5), round(v, 5)])
    n = cfg.n_params()
    best = min(val, key=lambda sv: sv[1])
    flops = sizing.training_flops(sizing.from_config(cfg), st.tokens)
    return {"size": size, "params": n, "data_size": n_data, "data": label(n_data, n_train),
            "steps": st.steps, "tokens": st.tokens, "epochs": round(st.tokens / n_data, 3),
            "tokens_per_param": float(f"{st.tokens / n:.3g}"), "flops_6nd": 6 * n * st.tokens,
            "flops": flops["total"], "train_loss": curve[-1][1], "val_loss": round(val[-1][1], 5),
            "best_val_loss": round(best[1], 5), "best_step": best[0], "curve": curve,
            "seconds": round(seconds, 1)}


def load_results(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `llm-deeper scaling sweep` first.")
    return json.loads(path.read_text())


def grid(results: dict) -> tuple[list[str], list[int], dict]:
    """(sizes by parameters, data sizes ascending, {(size, data_size): run})."""
    runs = {(r["size"], r["data_size"]): r for r in results["runs"]}
    sizes = sorted({r["size"] for r in results["runs"]},
                   key=lambda s: next(r["params"] for r in results["runs"] if r["size"] == s))
    return sizes, sorted({r["data_size"] for r in results["runs"]}), runs


def table(results: dict) -> str:
    """The sweep as a markdown table, one row per run."""
    rows = ["| model | parameters | data (tokens) | epochs | tokens / parameter | 6ND (FLOPs) "
            "| train loss | val loss | best val (step) |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    sizes, datas, runs = grid(results)
    for d in datas:
        for s in sizes:
            if r := runs.get((s, d)):
                rows.append(f"| {s} | {r['params']:,} | {r['data_size']:,} ({r['data']}) | "
                            f"{r['epochs']:g} | {r['tokens_per_param']:g} | "
                            f"{r['flops_6nd']:.2e} | {r['train_loss']:.3f} | "
                            f"{r['val_loss']:.3f} | {r['best_val_loss']:.3f} "
                            f"({r['best_step']}) |")
    return "\n".join(rows)


def findings(results: dict, margin: float = 0.02) -> list[tuple[str, bool]]:
    """The claims a sweep checks, each (sentence with its numbers, holds): on the most data,
    validation loss falls with size; every model does better on the most data than on the
    least; on the least data every model overfits (its validation loss ends `margin` above its
    best while its training loss ends below the one it reaches on the most data)."""
    sizes, datas, runs = grid(results)
    lo, hi = datas[0], datas[-1]
    top = [runs[s, hi]["val_loss"] for s in sizes if (s, hi) in runs]
    out = [(f"on {runs[sizes[0], hi]['data']} tokens validation loss falls with size: "
            + " > ".join(f"{v:.3f}" for v in top),
            len(top) == len(sizes) and all(a > b for a, b in zip(top, top[1:])))]
    for s in sizes:
        if (s, lo) not in runs or (s, hi) not in runs:
            continue
        a, b = runs[s, lo], runs[s, hi]
        out.append((f"{s}: val {a['val_loss']:.3f} on {a['data']} tokens > {b['val_loss']:.3f} "
                    f"on {b['data']}", a["val_loss"] > b["val_loss"] + margin))
        out.append((f"{s} overfits {a['data']} tokens: train {a['train_loss']:.3f} < "
                    f"{b['train_loss']:.3f} (on {b['data']}), val ends {a['val_loss']:.3f} > "
                    f"its best {a['best_val_loss']:.3f}",
                    a["train_loss"] < b["train_loss"]
                    and a["val_loss"] > a["best_val_loss"] + margin))
    return out
