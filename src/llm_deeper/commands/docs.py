"""`llm-deeper docs`: jobs on the documentation.

`llm-deeper docs figures` draws every figure the docs show into docs/figures/, each from the
package's own code (llm_deeper/figures/: one registered function per figure). `--quick` draws
the same figures from smaller settings (what the tests run); a figure that needs SmolLM2 or the
Shakespeare corpus is skipped, with one line saying how to fetch it, when that is not cached.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError

HELP = "the documentation: draw its figures"

# Figure.needs -> (is it cached?, what it is, the command that fetches it)
NEEDS = {
    "smollm2": (lambda: _models().is_cached("smollm2-135m"), "SmolLM2-135M",
                "llm-deeper models pull smollm2-135m"),
    "shakespeare": (lambda: _shakespeare().is_cached(), "the Shakespeare corpus",
                    "llm-deeper data pull shakespeare"),
}


def _models():
    from ..pretrained import models

    return models


def _shakespeare():
    from ..data import shakespeare

    return shakespeare


def add_arguments(p) -> None:
    p.set_defaults(docs_parser=p)
    sub = p.add_subparsers(dest="docs_command", metavar="<subcommand>")
    f = sub.add_parser("figures", help="draw the figures the docs show (docs/figures/*.png)")
    f.add_argument("--out", default="docs/figures", help="directory the PNG files go to")
    f.add_argument("--quick", action="store_true",
                   help="smaller settings (fewer steps, shorter texts): a check that every "
                   "figure draws, not the published figure")
    f.add_argument("--only", nargs="+", metavar="NAME",
                   help="draw only these figures (names as --list shows them; '.png' optional)")
    f.add_argument("--list", action="store_true",
                   help="list the figures (name, page, what it shows) and draw nothing")


def run(args) -> int:
    if args.docs_command is None:
        args.docs_parser.print_help()
        return 0
    return figures_command(args)


def select(figures: dict, only: list[str] | None) -> list:
    """The figures named in `only` (all when None), in name order; UserError for a name that is
    not registered."""
    if not only:
        return list(figures.values())
    names = [n if n.endswith(".png") else n + ".png" for n in only]
    unknown = [n for n in names if n not in figures]
    if unknown:
        raise UserError(f"no figure named {', '.join(unknown)}; the figures are "
                        f"{', '.join(figures)}.")
    return [figures[n] for n in sorted(set(names))]


def missing(fig) -> str | None:
    """Why the figure cannot be drawn here (its data is not cached), or None."""
    if not fig.needs:
        return None
    cached, what, command = NEEDS[fig.needs]
    return None if cached() else f"{what} is not cached (run '{command}')"


def draw(figs: list, out: Path, quick: bool, log=print) -> dict[str, float | None]:
    """Draw each figure into out/<name>; one line per figure (its time, or why it was
    skipped). Returns name -> seconds, or None for a skipped figure."""
    from ..util.progress import progress_bar

    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float | None] = {}
    width = max((len(f.name) for f in figs), default=0)
    bar = progress_bar(figs, desc="figures", unit="figure")
    say = bar.write if not bar.disable else log
    for fig in bar:
        bar.set_postfix_str(fig.name)
        why = missing(fig)
        if why:
            times[fig.name] = None
            say(f"  {fig.name:<{width}}  skipped: {why}")
            continue
        t0 = time.perf_counter()
        try:
            fig.draw(out / fig.name, quick)
        except ModuleNotFoundError as exc:  # an optional extra (e.g. HF tokenizers) is absent
            if (exc.name or "llm_deeper").split(".")[0] == "llm_deeper":
                raise
            times[fig.name] = None
            say(f"  {fig.name:<{width}}  skipped: the Python package '{exc.name}' is not "
                "installed (an optional extra of llm-deeper)")
            continue
        times[fig.name] = time.perf_counter() - t0
        say(f"  {fig.name:<{width}}  {times[fig.name]:6.1f} s  -> {out / fig.name}")
    bar.close()
    return times


def figures_command(args) -> int:
    from ..figures import all_figures

    figures = all_figures()
    chosen = select(figures, args.only)
    if args.list:
        for f in chosen:
            needs = f" (needs {NEEDS[f.needs][1]})" if f.needs else ""
            print(f"{f.name}  [{f.page}]{needs}\n    {f.what}")
        return 0
    mode = "quick settings" if args.quick else "full settings"
    print(f"drawing {len(chosen)} figure(s) into {args.out} ({mode})")
    t0 = time.perf_counter()
    times = draw(chosen, Path(args.out), args.quick)
    drawn = [n for n, t in times.items() if t is not None]
    skipped = len(times) - len(drawn)
    print(f"{len(drawn)} drawn in {time.perf_counter() - t0:.1f} s"
          + (f", {skipped} skipped (see above)" if skipped else ""))
    return 0
