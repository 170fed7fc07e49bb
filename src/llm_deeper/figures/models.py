"""Figures of the NumPy GPT and real-tools pages: the hand-written backward pass against
autograd, tensor by tensor, and which tokens of a chat fine-tuning learns from."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save


def gradient_errors(cfg, dtype, seed: int = 0) -> dict[str, float]:
    """max |ours - autograd| / max |autograd| per parameter tensor: the NumPy engine's
    hand-written backward against torch autograd through the torch engine's forward, both in
    `dtype` (tests/test_numpy_grads.py asserts the float64 case)."""
    import numpy as np
    import torch

    from ..numpy_engine.model import GPT
    from ..torch_engine.model import forward

    model = GPT(cfg, seed=seed, dtype=dtype)
    r = np.random.default_rng(seed)
    ids = r.integers(0, cfg.vocab_size, size=(4, cfg.context_length))
    targets = r.integers(0, cfg.vocab_size, size=(4, cfg.context_length))
    _, grads = model.loss_and_grads(ids, targets)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    _, loss = forward(tp, cfg, torch.tensor(ids), torch.tensor(targets))
    loss.backward()
    out = {}
    for k, p in tp.items():
        ref = p.grad.double().numpy()
        out[k] = float(np.abs(grads[k] - ref).max() / max(np.abs(ref).max(), 1e-30))
    return out


@figure("gradcheck.png", page="docs/numpy-gpt.md",
        what="the hand-written backward pass = autograd, per parameter tensor, in float64 and "
             "float32")
def gradcheck(path: Path, quick: bool) -> None:
    import numpy as np

    from ..config import preset

    plt = pyplot()
    cfg = preset("baby", n_layer=1 if quick else 2, context_length=16)
    errs = {name: gradient_errors(cfg, dt) for name, dt in (("float64", np.float64),
                                                              ("float32", np.float32))}
    names = list(errs["float64"])
    fig, ax = plt.subplots(figsize=(10, 4.4))
    x = np.arange(len(names))
    for i, (label, e) in enumerate(errs.items()):
        ax.bar(x + (i - 0.5) * 0.4, [max(e[n], 1e-18) for n in names], 0.4, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.axhline(1e-7, color="grey", lw=0.7, ls="--")
    ax.set(ylabel="max |ours - autograd| / max |autograd|",
           title=f"NumPy backward vs torch autograd: baby preset, {cfg.n_layer} layers, "
                 "one batch of 4 x 16 tokens")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save(fig, path)


@figure("assistant_mask.png", page="docs/hf.md", needs="smollm2",
        what="assistant-only loss: a tool-calling conversation through SmolLM2's chat "
             "template, the tokens that keep their labels coloured")
def assistant_mask(path: Path, quick: bool) -> None:
    from matplotlib.patches import Patch
    from transformers import AutoTokenizer

    from ..data.toolcalls import tool_calling_dataset
    from ..hf.finetune import tokenize_conversation
    from ..hf.models import hf_dir

    plt = pyplot()
    tok = AutoTokenizer.from_pretrained(hf_dir("smollm2-135m"))
    messages = tool_calling_dataset(n_train=4, n_val=1, n_test=1)["train"][0]["messages"]
    ex = tokenize_conversation(tok, messages, 1024)
    ids, labels = ex["input_ids"], ex["labels"]
    pieces = [tok.decode([i]).replace("\n", "\\n") for i in ids]
    if quick:
        pieces, labels = pieces[:80], labels[:80]
    # lay the tokens out as text: left to right, a new row when the line is full
    width, row, col, cells = 150, 0, 0, []  # characters per line (8 pt monospace)
    for piece, lab in zip(pieces, labels):
        n = max(len(piece), 1)
        if col + n > width:
            row, col = row + 1, 0
        cells.append((row, col, piece, lab != -100))
        col += n + 1
    rows = row + 1
    fig, ax = plt.subplots(figsize=(13, 0.24 * rows + 1.4))
    for r, c, piece, learned in cells:
        ax.text(c, r, piece, fontsize=8, family="monospace", va="center",
                bbox=dict(boxstyle="square,pad=0.1", lw=0,
                          fc="#f4b183" if learned else "#e8e8e8"))
    n_learned = sum(lab != -100 for lab in ex["labels"])
    ax.set(xlim=(-1, width + 1), ylim=(rows, -1),
           title=f"one tool-calling conversation, {len(ex['input_ids'])} tokens: "
                 f"{n_learned} carry labels (the assistant's), the rest are -100")
    ax.axis("off")
    fig.legend(handles=[Patch(fc="#f4b183", label="learned (label = the token)"),
                        Patch(fc="#e8e8e8", label="context only (label -100)")],
               loc="lower center", fontsize=8, ncols=2, frameon=False)
    fig.tight_layout()
    save(fig, path)
