"""The pool of KV-cache blocks of the native engine (the pages of torch_engine/paged.py), and
prefix caching: requests that begin with the same tokens share the blocks of that beginning.

Paging. A sequence holds a list of block ids, its block table; it takes a new block only when
its last one is full, and gives them all back when it finishes or is preempted. Which block a
sequence gets does not matter: the block table says where each of its tokens lives.

Prefix caching (vLLM's "automatic prefix caching"; SGLang's RadixAttention shares prefixes
through a radix tree of tokens, the same idea with another index). Many requests start alike: a
system prompt, few-shot examples, the earlier turns of a chat. Attention is causal, so the keys
and values of token t depend only on tokens 0..t: two requests whose first t tokens are equal
have equal K/V there, and one copy in the cache can serve both, prefilled once.

The unit of sharing is a *full* block of B = block_size tokens. Block i (tokens iB .. iB+B-1)
is named by a hash chained through every block before it:

    h_0 = hash(root(adapter), tokens[0:B])        root: the LoRA adapter's name (None: base)
    h_i = hash(h_(i-1),       tokens[iB:(i+1)B])

so h_i names the whole prefix tokens[0:(i+1)B], not only its own B tokens: the same B tokens
after another beginning get another hash (rightly: their K/V see other tokens before them, at
other positions). The adapter is in the root because a LoRA adapter changes every K/V, so base
and adapter requests never share. Worked example, B = 4, a 8-token system prompt S0..S7:

    A = S0 S1 S2 S3 | S4 S5 S6 S7 | q1 q2 q3      h0 = hash(root, S0..S3), h1 = hash(h0, S4..S7);
                                                  the last block is not full: never shared
    B = S0 S1 S2 S3 | S4 S5 S6 S7 | r1 r2         h0, h1 found: shares A's 2 blocks, computes r1 r2
    C = S0 S1 S2 S3 | S4 S5 S6 S7                 shares h0 only (see "the last token" below)
    D = X  S1 S2 S3 | S4 S5 S6 S7 | ...           hash(root, X S1 S2 S3) != h0, so block 1 differs
                                                  too though its own tokens are S4..S7: no share

The mechanics (invariants the tests check):

* `ref[b]`, the reference count: how many block tables hold block b. `used` is the number of
  blocks with ref > 0; every other block is free.
* A block is registered under its hash (`cached[h] = b`) only once it is full *and* its K/V are
  computed (all of it below the sequence's `n_cached`): `commit`. Nobody ever writes to a
  shared block: a sequence writes only at positions >= n_cached, and shared blocks lie wholly
  below. (If two sequences compute the same block at once, the first to commit registers its
  copy; the other copy stays private.)
* The last token: a new sequence takes at most floor((n - 1) / B) cached blocks of its n tokens,
  so at least one token runs through the model and gives the next-token logits.
* Free but cached: a block whose ref drops to 0 keeps its K/V and its hash and goes to the end
  of an LRU list (`evictable`), so a later request can still find it (ref 0 -> 1). New blocks
  come from never-used (or hash-less) free blocks first (`fresh`); only when none is left is
  the least recently used cached block evicted (its hash dropped) and reused. A sequence frees
  its blocks last-first, so a prefix's tail is evicted before its head (a tail is useless
  without its head).

Python's `hash` of a tuple is 64 bits: two different prefixes with one hash (a wrong K/V
served) would take ~2^32 distinct cached blocks to be likely; vLLM offers SHA-256 for the
paranoid. The counters `prompt_tokens` (tokens of every admitted sequence, recomputations after
preemption included) and `hit_tokens` (those found in the cache) give the hit rate.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque


class BlockManager:
    """Which blocks are free, each sequence's block table (`seq.block_table`), and the prefix
    cache. `enable_prefix_caching` is off by default here (the lessons and figures page fake
    tokens); NativeEngine turns it on."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks  # block tables holding each block
        self.hash_of: list[int | None] = [None] * num_blocks  # the prefix a block holds
        self.cached: dict[int, int] = {}  # prefix hash -> the block holding its K/V
        self.fresh: deque[int] = deque(range(num_blocks))  # free, nothing worth keeping
        self.evictable: OrderedDict[int, None] = OrderedDict()  # free but cached, LRU first
        self.prompt_tokens = self.hit_tokens = 0

    # ------------------------------------------------------------------ paging
    @property
    def free(self) -> list[int]:
        """Free blocks in the order they would be taken."""
        return [*self.fresh, *self.evictable]

    @property
    def num_free(self) -> int:
        return len(self.fresh) + len(self.evictable)

    @property
    def used(self) -> int:
        """Blocks some sequence holds (ref > 0)."""
        return self.num_blocks - self.num_free

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def can_hold(self, seq, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - len(seq.block_table) <= self.num_free

    def grow(self, seq, n_tokens: int) -> None:
        """Give seq enough blocks for n_tokens tokens (call can_hold first)."""
        while len(seq.block_table) < self.blocks_for(n_tokens):
            seq.block_table.append(self._take())

    def _take(self) -> int:
        if self.fresh:
            b = self.fresh.popleft()
        else:  # evict the least recently used cached block: its prefix is forgotten
            b, _ = self.evictable.popitem(last=False)
            self._forget(b)
        self.ref[b] = 1
        return b

    def _forget(self, b: int) -> None:
        h, self.hash_of[b] = self.hash_of[b], None
        if h is not None and self.cached.get(h) == b:
            del self.cached[h]

    def release(self, seq) -> None:
        """seq gives back its blocks (finished, cancelled or preempted): its computed full
        blocks stay findable until evicted."""
        self.commit(seq)
        for b in reversed(seq.block_table):  # tail first into the LRU: evicted first
            assert self.ref[b] > 0, f"block {b} released more often than taken"
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.hash_of[b] is None:
                    self.fresh.append(b)
                else:
                    self.evictable[b] = None
        seq.block_table = []
        seq.n_cached = seq.n_committed = 0

    # ------------------------------------------------------------------ prefix caching
    def block_hashes(self, seq, n_blocks: int) -> list[int]:
        """The chained hashes of seq's first n_blocks full blocks (kept on the sequence: its
        tokens only ever grow, so they stay valid, across preemption too)."""
        hs, B = seq.block_hashes, self.block_size
        while len(hs) < n_blocks:
            i = len(hs)
            parent = hs[-1] if hs else hash(("root", seq.req.adapter))
            hs.append(hash((parent, tuple(seq.tokens[i * B:(i + 1) * B]))))
        return hs[:n_blocks]

    def cached_prefix(self, seq) -> list[int]:
        """The blocks holding the longest cached run of seq's leading full blocks, leaving at
        least its last token to compute. Looks only; `admit` takes them."""
        if not self.prefix_caching or seq.block_table:
            return []
        found = []
        for h in self.block_hashes(seq, (len(seq.tokens) - 1) // self.block_size):
            b = self.cached.get(h)
            if b is None:
                break
            found.append(b)
        return found

    def can_admit(self, seq, prefix: list[int], n_tokens: int) -> bool:
        """Room for seq to share `prefix` and hold n_tokens? A shared block that sat free in
        the LRU counts against the free pool too."""
        revived = sum(1 for b in prefix if self.ref[b] == 0)
        return self.blocks_for(n_tokens) - len(prefix) + revived <= self.num_free

    def admit(self, seq, prefix: list[int], n_tokens: int) -> None:
        """A sequence without blocks shares `prefix` (its K/V already there: n_cached starts
        after it) and gets new blocks up to n_tokens (call can_admit first)."""
        for b in prefix:
            if self.ref[b] == 0:
                del self.evictable[b]
            self.ref[b] += 1
        seq.block_table = list(prefix)
        seq.n_cached = len(prefix) * self.block_size
        seq.n_committed = len(prefix)
        self.prompt_tokens += len(seq.tokens)
        self.hit_tokens += seq.n_cached
        self.grow(seq, n_tokens)

    def commit(self, seq) -> None:
        """Register the blocks of seq that are full and computed (below n_cached) under their
        hashes: from now on other sequences can share them."""
        n_full = min(seq.n_cached // self.block_size, len(seq.block_table))
        if not self.prefix_caching or n_full <= seq.n_committed:
            return
        hashes = self.block_hashes(seq, n_full)
        for i in range(seq.n_committed, n_full):
            b, h = seq.block_table[i], hashes[i]
            if self.hash_of[b] is None and h not in self.cached:
                self.cached[h], self.hash_of[b] = b, h
        seq.n_committed = n_full

    def set_prefix_caching(self, on: bool) -> None:
        """Turn prefix caching on or off; either way the cache starts empty (vLLM's
        reset_prefix_cache). Blocks in use stay with their sequences."""
        self.prefix_caching = on
        self.cached.clear()
        self.hash_of = [None] * self.num_blocks
        self.fresh.extend(self.evictable)
        self.evictable.clear()
