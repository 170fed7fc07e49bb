"""The pool of KV-cache blocks of the native engine (the pages of torch_engine/paged.py).

A sequence holds a list of block ids, its block table; it takes a new block only when its last
one is full, and gives them all back when it finishes or is preempted. Which block a sequence
gets does not matter: the block table says where each of its tokens lives.
"""

from __future__ import annotations

import math
from collections import deque


class BlockManager:
    """Which blocks are free, and each sequence's block table (`seq.block_table`)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def can_hold(self, seq, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq, n_tokens: int) -> None:
        """Give seq enough blocks for n_tokens tokens (call can_hold first)."""
        while len(seq.block_table) < self.blocks_for(n_tokens):
            seq.block_table.append(self.free.popleft())

    def release(self, seq) -> None:
        self.free.extend(seq.block_table)
        seq.block_table = []
        seq.n_cached = 0

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free)
