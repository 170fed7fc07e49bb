"""The native engine's scheduler: which sequences take part in the next step.

1. Every running sequence decodes one token. If its last block is full it needs a new one; when
   none is free the newest running sequence is *preempted*: its blocks go back to the pool and
   it waits at the head of the queue, to be recomputed (prompt + what it generated so far) when
   blocks free up. Nothing it sent is lost or sent twice.
2. Waiting sequences are admitted, oldest first, while there is room: fewer than
   `max_num_seqs` running, their prompts within `max_batched_tokens`, and blocks for them.
   Their whole prompt is prefilled in this same step, packed with the decodes (paged.py).

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
    rng: np.random.Generator | None = None
    preemptions: int = 0

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
        """The sequences of the next step; each feeds tokens[n_cached:] (and has the blocks)."""
        step: list[Sequence] = []
        for seq in list(self.running):  # oldest first: they keep their places
            if seq not in self.running:  # preempted below for an older one
                continue
            while not self.blocks.can_hold(seq, len(seq.tokens)):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.grow(seq, len(seq.tokens))
                step.append(seq)
        budget = self.max_batched_tokens - len(step)
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = len(seq.tokens)
            if step and n > budget:
                break
            if not self.blocks.can_hold(seq, n):
                if not self.running and not step:  # alone and still too long: cannot ever run
                    self.waiting.popleft()
                    seq.out.put(UserError(f"the KV cache ({self.blocks.num_blocks} blocks of "
                                          f"{self.blocks.block_size}) cannot hold {n} tokens."))
                    continue
                break
            self.waiting.popleft()
            self.blocks.grow(seq, n)
            self.running.append(seq)
            step.append(seq)
            budget -= n
        return step
