"""The serving scheduler's timeline (docs/serving.md): the native engine's own Scheduler and
BlockManager (serve/scheduler.py, serve/block_manager.py) run on a small workload, with a KV pool
small enough that requests get preempted. Only the model is left out: each scheduled sequence
gains one token per step, which is all the scheduler sees of a forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, pyplot, save

# (arrival step, prompt tokens, tokens to generate) per request
WORKLOAD = ((0, 12, 10), (0, 6, 22), (1, 20, 6), (3, 9, 16), (5, 16, 12), (8, 5, 8),
            (10, 14, 14), (12, 7, 5))
STATES = ("", "waiting", "prefill", "decode", "preempted")  # codes 0..4 of the timeline
COLOURS = ("white", "#d9d9d9", "#ee854a", "#4878d0", "#d65f5f")


def simulate(workload, num_blocks: int, block_size: int, max_num_seqs: int = 8,
             max_batched_tokens: int = 64) -> dict:
    """Run the scheduler step by step. Returns {"states": (requests, steps) codes of STATES,
    "blocks": blocks in use during each step, "tokens": tokens fed each step,
    "preempted": (step, request) pairs, "finished": the order requests finished}."""
    from ..sampling import SamplingParams
    from ..serve.block_manager import BlockManager
    from ..serve.engine import GenRequest
    from ..serve.scheduler import Scheduler, Sequence

    sched = Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, max_batched_tokens)
    seqs = [Sequence(GenRequest(list(range(n)), SamplingParams(max_tokens=out)), list(range(n)),
                     n) for _, n, out in workload]
    index = {id(s): i for i, s in enumerate(seqs)}
    states, blocks, tokens, preempted, finished = [], [], [], [], []
    step = 0
    while len(finished) < len(seqs):
        for s, (arrive, _, _) in zip(seqs, workload):
            if arrive == step:
                sched.add(s)
        before = [s.preemptions for s in seqs]
        batch = sched.schedule()
        blocks.append(sched.blocks.used)  # during the step, before finished ones leave
        col = np.zeros(len(seqs), int)
        for s in sched.waiting:
            col[index[id(s)]] = 4 if s.preemptions else 1
        preempted += [(step, i) for i, s in enumerate(seqs) if s.preemptions > before[i]]
        fed = 0
        for s in batch:
            n_new = s.n_new  # the whole rest of its tokens, or a chunk of a long prompt
            col[index[id(s)]] = 2 if n_new > 1 else 3
            fed += n_new
            s.n_cached += n_new
            if s.n_cached < len(s.tokens):  # chunked prefill: nothing sampled yet
                continue
            s.tokens.append(0)  # the token the model would have sampled
            if len(s.generated) == s.req.params.max_tokens:
                sched.finish(s)
                finished.append(index[id(s)])
        states.append(col)
        tokens.append(fed)
        step += 1
        if step > 10_000:
            raise RuntimeError("the scheduler made no progress")
    return {"states": np.array(states).T, "blocks": np.array(blocks), "tokens": np.array(tokens),
            "preempted": preempted, "finished": finished}


@figure("scheduler_timeline.png", page="docs/serving.md",
        what="the paged scheduler on 8 requests: prefill, decode, waiting, preempted per step, "
             "and the KV blocks in use")
def scheduler_timeline(path: Path, quick: bool) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    workload = WORKLOAD[:4] if quick else WORKLOAD
    num_blocks, block_size = (8, 4) if quick else (14, 4)
    run = simulate(workload, num_blocks, block_size)
    states, n_steps = run["states"], run["states"].shape[1]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(13, 0.42 * len(workload) + 4.2), sharex=True,
                                 height_ratios=[len(workload), 4], layout="constrained")
    ax.imshow(states, cmap=ListedColormap(COLOURS), vmin=0, vmax=len(STATES) - 1,
              aspect="auto", interpolation="nearest", extent=(-0.5, n_steps - 0.5,
                                                              len(workload) - 0.5, -0.5))
    names = "ABCDEFGH"
    ax.set_yticks(range(len(workload)), [f"{names[i]}: arrives at step {a}, prompt {n}, "
                                         f"{out} out" for i, (a, n, out) in
                                         enumerate(workload)], fontsize=8)
    for step, i in run["preempted"]:
        ax.text(step, i, "x", ha="center", va="center", color="white", fontsize=8,
                fontweight="bold")
    ax.set_title("each request per step (x: preempted this step, its blocks freed; it comes "
                 "back as one prefill of prompt + what it generated)", fontsize=9)
    ax.legend(handles=[Patch(facecolor=c, edgecolor="0.5", label=s)
                       for s, c in zip(STATES[1:], COLOURS[1:])],
              loc="upper right", fontsize=8, ncols=4)
    ax.set_xticks(np.arange(0, n_steps, 5))
    ax.grid(alpha=0.25, axis="x")
    steps = np.arange(n_steps)
    bx.step(steps, run["blocks"], where="mid", color="C0", label="KV blocks in use")
    bx.axhline(num_blocks, color="C3", lw=1, ls="--", label=f"pool: {num_blocks} blocks of "
               f"{block_size} slots")
    bx.set_ylabel("KV blocks")
    bx.set_ylim(0, num_blocks * 1.4)  # room for the legend
    tx = bx.twinx()
    tx.bar(steps, run["tokens"], color="0.6", alpha=0.35, width=0.8,
           label="tokens fed to the model this step")
    tx.set_ylabel("tokens in the step")
    tx.set_ylim(0, run["tokens"].max() * 1.4)
    bx.set_zorder(tx.get_zorder() + 1)
    bx.patch.set_visible(False)
    bx.set_xlabel("scheduler step (one forward pass of the packed batch)")
    handles = bx.get_legend_handles_labels()[0] + tx.get_legend_handles_labels()[0]
    bx.legend(handles=handles, loc="upper right", fontsize=8, ncols=3)
    bx.grid(alpha=0.25)
    fig.suptitle(f"Continuous batching over a paged KV cache (serve/scheduler.py): "
                 f"{len(workload)} requests, {len(run['preempted'])} preemptions, "
                 f"{n_steps} steps")
    save(fig, path)
