"""The native engine's scheduler: which sequences take part in the next step, and how many of
their tokens.

Every step has a budget of `max_batched_tokens` new tokens (vLLM's max_num_batched_tokens):
the rows of one packed forward pass (torch_engine/paged.py).

1. Every running sequence that is decoding feeds one token; these go first and always run. If
   its last block is full it needs a new one; when none is free the newest running sequence is
   *preempted*: its blocks go back to the pool and it waits at the head of the queue, to be
   recomputed (prompt + what it generated so far) when blocks free up. Nothing it sent is lost
   or sent twice.
2. The budget left, `max_batched_tokens - decodes`, goes to prompts: first to running sequences
   whose prompt is only partly prefilled, then to waiting sequences, admitted oldest first while
   fewer than `max_num_seqs` run and there are blocks for them.
3. *Chunked prefill* (vLLM, and Sarathi-Serve, Agrawal et al. 2024): a prompt longer than what
   is left of the budget is not refused; it feeds the next chunk, tokens[n_cached : n_cached +
   chunk], and carries on in the next steps. A sequence's `n_new` says how many tokens it feeds
   this step. Its keys and values go to the cache chunk by chunk; the attention of a chunk
   starting at position s sees the s cached positions and, causally, its own (the mask with an
   offset of paged.py). Only the step that feeds the last token of `tokens` gives a next-token
   distribution that is sampled: before that the logits of a chunk's last row are the
   prediction of a token the prompt already has.

Why chunk? A 4000-token prompt prefilled in one step makes that step ~100x longer than a decode
step, and every running request waits for it: a hiccup in their streams (inter-token latency).
With a budget, each step costs about the same, so decodes keep their pace while prompts arrive
(a smaller budget: smoother streams; a bigger one: fewer steps per prompt, so a faster time to
first token). And prompts longer than the budget need no special case.

With prefix caching (block_manager.py) a waiting sequence first takes the cached blocks of its
prompt's beginning and starts at n_cached > 0: only the rest is prefilled and counted against
the budget. A preempted sequence finds its own computed blocks that way, unless they were
evicted in the meantime.

Requests join and leave between steps, so a short answer never waits for a long one: that is
continuous (iteration-level) batching (Yu et al., Orca, 2022).
"""

from __future__ import annotations

import queue
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .block_manager import BlockManager
from .engine import GenRequest


@dataclass(eq=False)  # identity: the scheduler finds and removes sequences by `in`/`remove`
class Sequence:
    req: GenRequest
    tokens: list[int]  # prompt + generated
    n_prompt: int
    out: queue.Queue = field(default_factory=queue.Queue)
    block_table: list[int] = field(default_factory=list)
    n_cached: int = 0  # tokens whose K/V are in the cache
    n_new: int = 0  # tokens it feeds in the step being scheduled: tokens[n_cached:n_cached+n_new]
    rng: np.random.Generator | None = None
    preemptions: int = 0
    block_hashes: list[int] = field(default_factory=list)  # of its full blocks (block_manager)
    n_committed: int = 0  # leading blocks of block_table registered in the prefix cache

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt:]


class Scheduler:
    """Chooses each step's sequences (see the module docstring). Single-threaded: only the
    engine thread calls it."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int = 64,
                 max_batched_tokens: int = 4096):
        self.blocks = blocks
        self.max_num_seqs, self.max_batched_tokens = max_num_seqs, max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> list[Sequence]:
        """The sequences of the next step; each feeds tokens[n_cached:n_cached + n_new] (and
        has the blocks for them)."""
        for seq in self.running:  # last step's K/V are computed: full blocks become shareable
            self.blocks.commit(seq)
        left = self.max_batched_tokens - sum(map(_decoding, self.running))  # for prompts
        step: list[Sequence] = []
        for seq in list(self.running):  # oldest first: they keep their places
            if seq not in self.running:  # preempted below for an older one
                continue
            n = len(seq.tokens) - seq.n_cached
            prefilling = n > 1
            if prefilling:  # a prompt partly prefilled: its next chunk, if the budget allows
                n = min(n, left)
                if n < 1:
                    continue
            while not self.blocks.can_hold(seq, seq.n_cached + n):
                victim = self.running[-1]
                left += _decoding(victim)  # its reserved token is free again
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.grow(seq, seq.n_cached + n)
                seq.n_new = n
                step.append(seq)
                if prefilling:  # decodes were counted before the loop
                    left -= n
        while self.waiting and len(self.running) < self.max_num_seqs and left > 0:
            seq = self.waiting[0]
            if self.blocks.blocks_for(len(seq.tokens)) > self.blocks.num_blocks:
                self.waiting.popleft()  # longer than the whole pool: cannot ever run
                seq.out.put(UserError(f"the KV cache ({self.blocks.num_blocks} blocks of "
                                      f"{self.blocks.block_size}) cannot hold "
                                      f"{len(seq.tokens)} tokens."))
                continue
            prefix = self.blocks.cached_prefix(seq)
            start = len(prefix) * self.blocks.block_size
            n = min(len(seq.tokens) - start, left)
            if not self.blocks.can_admit(seq, prefix, start + n):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, prefix, start + n)
            seq.n_new = n
            self.running.append(seq)
            step.append(seq)
            left -= n
        return step


def _decoding(seq: Sequence) -> bool:
    """All but its last token cached: it feeds that one token (a decode step)."""
    return len(seq.tokens) - seq.n_cached == 1
