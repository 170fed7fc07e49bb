"""`llm-deeper presets`: the model shapes `train --preset` knows, one line each."""

from __future__ import annotations

HELP = "list the model presets (train --preset): parameters and shape, one line each"


def add_arguments(p) -> None:
    pass


def run(args) -> None:
    from ..config import PRESETS, preset

    head = (f"{'preset':<17}{'parameters':>11}{'vocab':>6}{'layers':>7}{'d_model':>8}"
            f"{'d_ff':>6}{'heads/kv':>9}{'context':>8}  norm, activation, position")
    print(head)
    print("-" * len(head))
    for name in PRESETS:
        c = preset(name)
        print(f"{name:<17}{c.n_params():>11,}{c.vocab_size:>6}{c.n_layer:>7}{c.d_model:>8}"
              f"{c.d_ff:>6}{f'{c.n_head}/{c.n_kv_head}':>9}{c.context_length:>8}  "
              f"{c.norm}, {c.activation}, {c.position}")
    print("Parameters are counted with each preset's own vocab; `train` uses the tokenizer's\n"
          "(char on works: 84), and its --n-layer, --d-model, ... override the rest.")
