"""`llm-deeper scaling`: measure how validation loss falls with model size and data size.

    llm-deeper scaling sweep --sizes tiny,small,medium --data-sizes 20k,200k,1.5M,all \\
        --steps 1000 --out runs/scaling          # one JSON line per run, results.json
    llm-deeper scaling table --results runs/scaling   # the markdown table and the checks
    llm-deeper scaling plot --results runs/scaling --out scaling.png

`sweep` runs every pair through `train` (train_run, with --data-size), each into
--out/<size>-<data>/: a run already in --out/results.json is not trained again, an interrupted
one resumes exactly from its checkpoint. What a run records, the table and the claims a sweep
checks are in llm_deeper/scaling.py; the figures in llm_deeper/figures/scaling.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .. import scaling
from ..errors import UserError
from .train import encode_corpus, make_tokenizer, train_run

HELP = "sweep model sizes x data sizes through train, tabulate and plot validation loss"


def add_arguments(p) -> None:
    from ..engines import ENGINES

    d = scaling.SweepSettings()
    sub = p.add_subparsers(dest="scaling_command", required=True, metavar="<step>")
    q = sub.add_parser("sweep", help="train every model size on every data size (same steps)")
    q.add_argument("--sizes", default="tiny,small,medium",
                   help="presets, comma-separated (see `llm-deeper presets`)")
    q.add_argument("--data-sizes", default="20k,200k,1.5M,all",
                   help="tokens of the training split each model trains on, comma-separated: "
                   "50000, 200k, 1.5M, 25%% or all")
    q.add_argument("--steps", type=int, default=d.steps, help="optimizer steps of every run")
    q.add_argument("--out", default="runs/scaling",
                   help="one checkpoint directory per run, results.json and runs.jsonl")
    q.add_argument("--engine", choices=ENGINES, default=d.engine,
                   help="the training engine")
    q.add_argument("--data", default=d.data, help="works, a title or a text file (char tokens)")
    for name, typ, help_ in (
            ("context-length", int, "tokens every model sees at once (replaces the presets')"),
            ("batch-size", int, "windows per step"), ("lr", float, "peak learning rate"),
            ("warmup", int, "steps of linear warmup"),
            ("eval-interval", int, "steps between validation estimates (the curves' points)"),
            ("eval-iters", int, "batches per validation estimate"),
            ("seed", int, "seed of every run's initialisation and batches")):
        q.add_argument(f"--{name}", type=typ, default=getattr(d, name.replace("-", "_")),
                       help=help_)
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, help_ in (("table", "the results as a markdown table, and the sweep's checks"),
                        ("plot", "draw the results: loss against parameters and data, curves")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--results", default="runs/scaling",
                       help="a sweep's --out or its results.json")
        if name == "plot":
            q.add_argument("--out", default="scaling.png",
                           help="the figure; its curves go beside it as <name>_curves.png")


def run(args) -> int | None:
    if args.scaling_command == "sweep":
        sizes = [s for s in args.sizes.split(",") if s]
        datas = [s for s in args.data_sizes.split(",") if s]
        if not sizes or not datas:
            raise UserError("--sizes and --data-sizes each need at least one value.")
        for d in datas:
            scaling.parse_data_size(d)
        st = scaling.SweepSettings(
            steps=args.steps, context_length=args.context_length, batch_size=args.batch_size,
            lr=args.lr, warmup=args.warmup, eval_interval=args.eval_interval,
            eval_iters=args.eval_iters, seed=args.seed, engine=args.engine, data=args.data)
        try:
            results = sweep(sizes, datas, st, args.out, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"interrupted: {args.out}/results.json holds the finished runs; the same "
                  "command resumes the rest")
            return 130
        print(f"{len(results['runs'])} runs in {args.out}/results.json")
        return None
    results = scaling.load_results(args.results)
    if args.scaling_command == "table":
        print(scaling.table(results))
        for sentence, ok in scaling.findings(results):
            print(f"{'holds' if ok else 'FAILS'}: {sentence}")
        return None
    from ..figures.scaling import draw

    paths = draw(results, args.out)
    print(json.dumps({"figures": [str(p) for p in paths]}))
    return None


def corpus_split(data: str) -> tuple[int, int]:
    """(training, validation) tokens of `data` with the char tokenizer, as train_run splits it."""
    from ..data import load_text, split_train_val

    text = load_text(data)
    train_ids, val_ids = split_train_val(encode_corpus(make_tokenizer("char", text), text))
    return len(train_ids), len(val_ids)


def sweep(sizes: list[str], data_sizes: list, st: scaling.SweepSettings, out="runs/scaling", *,
          progress: bool = True, log=print, emit=print) -> dict:
    """Train every (size, data size) pair not yet in out/results.json, one after another, and
    return the results. emit gets one JSON line per run (also appended to out/runs.jsonl)."""
    from ..checkpoint import read_config
    from ..config import preset
    from ..util.paths import atomic_write_text

    out = Path(out)
    settings = dataclasses.asdict(st)
    results = {"settings": settings, "runs": []}
    if (out / "results.json").is_file():
        results = scaling.load_results(out)
        if results["settings"] != settings:
            diff = sorted(k for k in settings if results["settings"].get(k) != settings[k])
            raise UserError(f"{out} holds a sweep with other settings ({', '.join(diff)}); pass "
                            "the same settings to extend it, or another --out.")
    for size in sizes:
        preset(size)  # an unknown preset is refused before anything runs
    n_train, n_val = corpus_split(st.data)
    results["corpus"] = {"data": st.data, "tokenizer": "char", "train_tokens": n_train,
                         "val_tokens": n_val}
    wanted = [(size, scaling.resolve_data_size(d, n_train, st.data) or n_train)
              for d in data_sizes for size in sizes]
    done = {(r["size"], r["data_size"]) for r in results["runs"]}
    for k, (size, n_data) in enumerate(wanted, 1):
        name = f"{size}-{scaling.label(n_data, n_train)}"
        head = f"[{k}/{len(wanted)}] {size} on {scaling.label(n_data, n_train)} tokens"
        if (size, n_data) in done:
            log(f"{head}: in {out / 'results.json'} already, not retrained")
            continue
        run_dir = out / name
        state_file = run_dir / "trainer_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else None
        t0 = time.perf_counter()
        if state and state["step"] >= st.steps:  # finished, but not recorded
            history, cfg = state["history"], read_config(run_dir)
        else:
            log(f"{head} ({st.steps:,} steps, {st.tokens:,} tokens)"
                + (f": resuming at step {state['step']}" if state else ""))
            r = train_run(preset_name=size, data=st.data, tokenizer="char", out=str(run_dir),
                          steps=st.steps, resume=bool(state), engine=st.engine,
                          data_size=n_data if n_data < n_train else None,
                          overrides={"context_length": st.context_length},
                          train_overrides={k: getattr(st, k) for k in (
                              "batch_size", "lr", "warmup", "eval_interval", "eval_iters",
                              "seed")},
                          progress=progress, log=log)
            if r["interrupted"]:
                raise KeyboardInterrupt
            history, cfg = r["history"], r["model"].cfg
        rec = scaling.record(size, cfg, n_data, st, history, time.perf_counter() - t0, n_train)
        results["runs"].append(rec)
        results["runs"].sort(key=lambda r: (r["data_size"], r["params"]))
        atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
        line = json.dumps({k: v for k, v in rec.items() if k != "curve"})
        with open(out / "runs.jsonl", "a") as f:
            f.write(line + "\n")
        emit(line)
    return results
