"""Figures of the big-picture, training, fine-tuning and sizing pages, each computed by the
package: the learning-rate schedule the loop uses, LoRA's shapes and trainable shares from the
calculator, memory per model size against hardware, and in-context learning on SmolLM2."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save


@figure("lr_schedule.png", page="docs/training.md",
        what="the learning rate per step: linear warmup, then cosine decay (train.lr_at)")
def lr_schedule(path: Path, quick: bool) -> None:
    from ..train import TrainConfig, lr_at

    plt = pyplot()
    tc = TrainConfig()  # the defaults `llm-deeper train` uses
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for warmup, ls in ((tc.warmup, "-"), (0, ":"), (400, "--")):
        steps = range(0, tc.steps + 1, 10 if quick else 1)
        ax.plot(list(steps), [lr_at(s, tc.lr, tc.min_lr, warmup, tc.steps) for s in steps], ls,
                label=f"warmup {warmup}" + (" (default)" if warmup == tc.warmup else ""))
    ax.axhline(tc.min_lr, color="grey", lw=0.6)
    ax.annotate(f"min_lr {tc.min_lr:g}", (tc.steps * 0.72, tc.min_lr), xytext=(0, 6),
                textcoords="offset points", color="grey")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"lr_at: peak {tc.lr:g}, {tc.steps} steps (TrainConfig's defaults)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


@figure("lora.png", page="docs/finetuning.md",
        what="LoRA: W x + (alpha/r) B A x, the shapes, and SmolLM2's trainable share per rank")
def lora(path: Path, quick: bool) -> None:
    from matplotlib.patches import Rectangle

    from .. import sizing

    plt = pyplot()
    a = smollm2_arch()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    # left: one adapted matrix to scale (SmolLM2's wq: 576 x 576, rank 16)
    d, r, s = a.d_model, 16, 1 / 100
    boxes = [("W (frozen)\n576 x 576", 0, d, d, "#c9d6ea"),
             ("B\n576 x 16", 7.2, d, r, "#f4b183"), ("A\n16 x 576", 7.2 + r * s + 0.4, r, d,
                                                     "#f4b183")]
    for label, x0, h, w, colour in boxes:
        ax.add_patch(Rectangle((x0, 0), w * s, h * s, facecolor=colour, edgecolor="black"))
        ax.text(x0 + w * s / 2, h * s + 0.25, label, ha="center", va="bottom", fontsize=9)
    ax.text(6.4, d * s / 2, "+", fontsize=22, ha="center", va="center")
    ax.text(6.4, -0.9, "h = W x + (alpha / r) B A x", ha="center", fontsize=11)
    full, lora_r = d * d, r * (d + d)
    ax.text(6.4, -1.6, f"trainable: {lora_r:,} of {full:,} ({lora_r / full:.1%}) for this "
            "matrix", ha="center", fontsize=9)
    ax.set(xlim=(-0.3, 14.5), ylim=(-2.0, 7.8), aspect="equal", title="one adapted matrix "
           "(SmolLM2's wq, rank 16, drawn to scale)")
    ax.axis("off")
    # right: trainable share of the whole model against rank (the calculator's exact count)
    total = sizing.params(a)["total"]
    ranks = [1, 2, 4, 8, 16, 32, 64, 128] if not quick else [4, 16, 64]
    for targets, label in ((("wq", "wv"), "wq, wv (the LoRA paper)"),
                           (("all-linear",), "all linear layers")):
        share = [100 * sizing.lora_params(a, k, targets) / total for k in ranks]
        bx.plot(ranks, share, "o-", label=label)
    bx.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable parameters (% of model)",
           title=f"SmolLM2-135M ({total:,} parameters)")
    bx.set_xticks(ranks, [str(k) for k in ranks])
    bx.grid(alpha=0.3, which="both")
    bx.legend()
    fig.tight_layout()
    save(fig, path)


def smollm2_arch():
    """SmolLM2-135M's shape (its published config.json values; no file needed)."""
    from .. import sizing

    return sizing.from_hf({"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                           "intermediate_size": 1536, "num_hidden_layers": 30,
                           "num_attention_heads": 9, "num_key_value_heads": 3,
                           "tie_word_embeddings": True, "max_position_embeddings": 8192},
                          "SmolLM2-135M")


@figure("memory_by_size.png", page="docs/sizing.md",
        what="GB to run and to fine-tune 0.5B-70B models against the memory of common hardware")
def memory_by_size(path: Path, quick: bool) -> None:
    from .. import sizing

    plt = pyplot()
    sizes = list(sizing.REFERENCE)
    n, need = [], {k: [] for k in ("bf16 inference", "Q4_0 inference", "LoRA r16", "QLoRA r16")}
    for size in sizes:
        src, d = sizing.REFERENCE[size]
        a = sizing.from_hf(d, src)
        n.append(sizing.params(a)["total"] / 1e9)
        for key, dtype in (("bf16 inference", "bf16"), ("Q4_0 inference", "q4_0")):
            need[key].append(sizing.inference_memory(a, 4096, 1, dtype, "fp16")["total"] / 1e9)
        for key, method in (("LoRA r16", "lora"), ("QLoRA r16", "qlora")):
            m = sizing.training_memory(a, method, 1, 2048, "bf16", 16, checkpointing=True)
            need[key].append(1.1 * m["total"] / 1e9)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for key, ys in need.items():
        ax.plot(n, ys, "o-", label=key)
    for hw in ("NVIDIA, 8 GB", "NVIDIA, 24 GB", "NVIDIA, 80 GB", "Apple silicon, 64 GB"):
        gb, share = sizing.HARDWARE[hw]
        ax.axhline(gb * share, color="grey", lw=0.7, ls="--")
        ax.text(n[0], gb * share * 1.05, f"{hw}: {gb * share:.0f} usable", fontsize=8,
                color="dimgrey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n, [f"{s}\n{x:.2f}B" for s, x in zip(sizes, n)])
    ax.set(xlabel="model (parameters)", ylabel="memory needed (GB, log scale)",
           title="llm-deeper calc: 4k-token inference, and LoRA/QLoRA on 2k tokens")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save(fig, path)


@figure("icl_shots.png", page="docs/big-picture.md", needs="smollm2",
        what="in-context learning: SmolLM2's accuracy on held-out country -> capital queries "
             "against the number of examples in the prompt")
def icl_shots(path: Path, quick: bool) -> None:
    from ..evaluation import icl
    from .smollm2 import smollm2

    plt = pyplot()
    model, tok = smollm2()
    shots, seeds = ((0, 3), (0,)) if quick else ((0, 1, 3, 5), (0, 1, 2))
    r = icl.run(model, tok, shots=shots, seeds=seeds, n_queries=2 if quick else None,
                log=lambda *a: None)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for seed in seeds:
        ks = [k for k in shots if seed in r["accuracy"][k] or k == 0]
        acc = [r["accuracy"][k].get(seed, r["accuracy"][k].get(seeds[0])) for k in ks]
        ax.plot(ks, acc, "o-", alpha=0.8, label=f"demonstrations draw {seed}")
    ax.set(xlabel="examples in the prompt (k-shot)", ylabel="exact-match accuracy",
           ylim=(-0.03, 1), xticks=list(shots),
           title=f"SmolLM2-135M, {r['queries']} held-out queries, greedy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)
