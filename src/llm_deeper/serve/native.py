"""The native engine: continuous batching over a paged KV cache, in the spirit of nano-vllm.

One thread runs the model. Requests arrive in an inbox; every step the scheduler decides which
sequences take part:

1. Every running sequence decodes one token. If its last block is full it needs a new one; when
   none is free the newest running sequence is *preempted*: its blocks go back to the pool and
   it waits at the head of the queue, to be recomputed (prompt + what it generated so far) when
   blocks free up. Nothing it sent is lost or sent twice.
2. Waiting sequences are admitted, oldest first, while there is room: fewer than
   `max_num_seqs` running, their prompts within `max_batched_tokens`, and blocks for them.
   Their whole prompt is prefilled in this same step, packed with the decodes (paged.py).

Then one packed forward pass gives every sequence its next-token logits, the sampler (engine.
choose: penalties, grammar mask, temperature/top-k/top-p/min-p) picks each token, and each
token goes to its request's queue. A sequence that ends (EOS, max_tokens) or whose client went
away (its `cancelled` event) gives its blocks back before the next step.

Requests join and leave between steps, so a short answer never waits for a long one: that is
continuous (iteration-level) batching (Yu et al., Orca, 2022). With `max_num_seqs=1` the same
engine serves one request at a time: the "batching off" baseline of `bench serve`.

Which thread runs the model matters on CPU: once one thread has run PyTorch's parallel (OpenMP)
kernels, small kernels started from another thread cost ~0.1 ms more each (measured: a
(1x64)@(64x100) matmul 16 us -> 144 us), which made a decode step 50 % slower. So `serve` loads
the model and runs the loop on the main thread (`run_forever`) and puts the HTTP server on a
side thread; `start=True` (tests, notebooks) runs the loop on a thread of its own instead.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import UserError
from .engine import GenRequest, Step, choose

_DONE = object()


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


class BlockManager:
    """The pool of KV-cache blocks: which are free, and each sequence's block table."""

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def can_hold(self, seq: Sequence, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, n_tokens: int) -> None:
        """Give seq enough blocks for n_tokens tokens (call can_hold first)."""
        while len(seq.block_table) < self.blocks_for(n_tokens):
            seq.block_table.append(self.free.popleft())

    def release(self, seq: Sequence) -> None:
        self.free.extend(seq.block_table)
        seq.block_table = []
        seq.n_cached = 0

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free)


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


class NativeEngine:
    """The PyTorch decoder (torch_engine) behind the continuous-batching scheduler."""

    def __init__(self, model: str, device: str = "cpu", max_num_seqs: int = 64,
                 block_size: int = 16, kv_cache_bytes: int = 1 << 30,
                 max_batched_tokens: int = 4096, adapters: dict[str, str] | None = None, *,
                 torch_model=None, tokenizer=None, start: bool = True):
        from ..torch_engine.paged import PagedKVCache

        self.model_name = model
        self.adapters = dict(adapters or {})  # served name -> path
        self.device = device
        if torch_model is None:
            torch_model, tokenizer = load_native(model, device)
        self.model = torch_model.eval().fuse_for_inference()
        dtype = next(self.model.parameters()).dtype
        self.lora = {name: load_lora(path, self.model.cfg, dtype, device)
                     for name, path in self.adapters.items()}
        self.tokenizer = tokenizer
        self.chat_template = getattr(tokenizer, "chat_template", None)
        cfg = self.model.cfg
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.eos_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
        per_block = PagedKVCache.bytes_per_block(cfg, block_size, dtype)
        # at least one full-context sequence must fit, whatever the budget
        num_blocks = max(kv_cache_bytes // per_block, math.ceil(cfg.context_length / block_size))
        self.cache = PagedKVCache(cfg, int(num_blocks), block_size, dtype, device)
        self.scheduler = Scheduler(BlockManager(int(num_blocks), block_size), max_num_seqs,
                                   max(max_batched_tokens, cfg.context_length))
        self.inbox: queue.Queue = queue.Queue()
        self.steps = 0
        self._grammar = None
        if start:
            threading.Thread(target=self.run_forever, daemon=True, name="native-engine").start()

    # ------------------------------------------------------------------ the engine protocol
    @property
    def grammar(self):
        if self._grammar is None:
            from .grammar import GrammarFactory

            self._grammar = GrammarFactory(self.tokenizer, self.vocab_size)
        return self._grammar

    @property
    def running(self) -> int:
        """Requests admitted or waiting (for /health)."""
        s = self.scheduler
        return len(s.running) + len(s.waiting) + self.inbox.qsize()

    @property
    def kv_blocks_used(self) -> int:
        return self.scheduler.blocks.used

    def generate(self, req: GenRequest) -> Iterator[Step]:
        if req.adapter is not None and req.adapter not in self.lora:
            raise UserError(f"unknown adapter '{req.adapter}'.")
        if not req.prompt_ids:
            raise UserError("the prompt is empty.")
        if req.params.max_tokens == 0:
            return
        if len(req.prompt_ids) + req.params.max_tokens > self.context_length:
            raise UserError(f"prompt + max_tokens exceed the context of {self.context_length}.")
        seq = Sequence(req, list(req.prompt_ids), len(req.prompt_ids),
                       rng=np.random.default_rng(req.params.seed))
        self.inbox.put(seq)
        try:
            while True:
                item = seq.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # finished, or the consumer stopped listening: the engine frees the blocks
            req.cancelled.set()

    def stop(self) -> None:
        """Make run_forever return (after the step in progress)."""
        self.inbox.put(_DONE)

    # ------------------------------------------------------------------ the engine thread
    def run_forever(self) -> None:
        s = self.scheduler
        while True:
            idle = not s.running and not s.waiting
            try:  # block only when there is nothing to do
                item = self.inbox.get(timeout=None if idle else 0)
                while True:
                    if item is _DONE:
                        return
                    s.add(item)
                    item = self.inbox.get_nowait()
            except queue.Empty:
                pass
            for seq in [q for q in (*s.running, *s.waiting) if q.req.cancelled.is_set()]:
                s.finish(seq)
                seq.out.put(_DONE)
            batch = s.schedule()
            if not batch:
                continue
            try:
                self._step(batch)
            except Exception as exc:  # a bug: fail these requests, keep serving
                for seq in batch:
                    s.finish(seq)
                    seq.out.put(RuntimeError(f"engine step failed: {exc!r}"))

    def _step(self, batch: list[Sequence]) -> None:
        from ..torch_engine.paged import SeqSlice, packed_forward

        slices = [SeqSlice(q.tokens[q.n_cached:], q.n_cached, q.block_table, q.req.adapter)
                  for q in batch]
        logits = packed_forward(self.model, slices, self.cache, self.lora).float().cpu()
        for seq in batch:
            seq.n_cached = len(seq.tokens)
        self.steps += 1
        fast = [i for i, q in enumerate(batch) if _plain_greedy(q.req)]
        best = logits[fast].argmax(-1).tolist() if fast else []
        picks = dict(zip(fast, best))
        rows = logits.numpy()
        for i, seq in enumerate(batch):
            req = seq.req
            if i in picks:
                step = Step(picks[i])
            else:
                step = choose(rows[i], req, seq.tokens, seq.generated, seq.rng)
            seq.out.put(step)
            seq.tokens.append(step.token)
            if (step.token in self.eos_ids and not req.ignore_eos) \
                    or len(seq.generated) >= req.params.max_tokens or req.cancelled.is_set():
                self.scheduler.finish(seq)
                seq.out.put(_DONE)


def _plain_greedy(req: GenRequest) -> bool:
    """Greedy with nothing to apply per token: the argmax of the whole batch at once."""
    p = req.params
    return (p.greedy and req.constraint is None and req.top_logprobs is None
            and p.repetition_penalty == 1.0 and not p.presence_penalty
            and not p.frequency_penalty)


class ServingTokenizer:
    """Our byte-level BPE (tokenizers/bpe.py, the same ids as HF tokenizers: tested) with the
    few methods the server calls, spelled as transformers spells them, so the app takes either.
    Serving on it skips importing transformers (~15 s of a server's start on this machine)."""

    def __init__(self, bpe, chat_template: str | None, eos_token_id: int | None):
        self.bpe, self.chat_template, self.eos_token_id = bpe, chat_template, eos_token_id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.bpe.encode(text)}

    def __len__(self) -> int:
        return self.bpe.vocab_size

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if int(i) not in self.bpe.id_to_special]
        return self.bpe.decode(ids)

    def llguidance(self, n_vocab: int):
        """llguidance's tokenizer, from our tokenizer.json."""
        from llguidance import LLTokenizer

        return LLTokenizer(self.bpe.to_json(), n_vocab=n_vocab, eos_token=self.eos_token_id)


def load_lora(path, cfg, dtype, device) -> dict:
    """A PEFT adapter as the native engine applies it: {weight: (A, B, scale)} as tensors."""
    import torch

    from ..weights import read_peft_lora

    return {n: (torch.from_numpy(A).to(device, dtype), torch.from_numpy(B).to(device, dtype), s)
            for n, (A, B, s) in read_peft_lora(path, cfg).items()}


def load_native(model: str, device: str = "cpu"):
    """(TorchGPT, ServingTokenizer) for a registry name or a GGUF file."""
    from pathlib import Path

    from .. import models
    from ..torch_engine.model import TorchGPT
    from ..weights import load_gguf

    if Path(model).is_dir():
        raise UserError(f"{model} is a directory: the native engine reads GGUF files and "
                        "registry models; an HF directory runs with --engine hf.")
    path = models.require(model) if model in models.REGISTRY else Path(model)
    if not path.is_file():
        raise UserError(f"{model} is neither a registry model ({', '.join(models.REGISTRY)}) "
                        "nor a GGUF file.")
    pre = load_gguf(path)
    tok = ServingTokenizer(pre.tokenizer, pre.chat_template, pre.eos_id)
    return TorchGPT(pre.config, pre.params).to(device), tok
