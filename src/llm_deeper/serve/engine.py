"""What the server asks of an engine, and the `hf` engine (transformers + PEFT adapters).

An engine turns one request (prompt token ids, sampling parameters, an optional adapter and an
optional token mask from a grammar) into a stream of `Step`s, one per generated token. The
server does everything else (chat templates, tool and reasoning parsing, the wire format), so
every engine behaves the same to clients.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

from ..errors import UserError
from ..sampling import SamplingParams, apply_penalties, filter_logits


@dataclass
class GenRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # a name given with --lora-modules
    top_logprobs: int | None = None  # None: no logprobs; 0..20: chosen token (+ the top n)
    # grammar (grammar.Constraint): generated ids -> boolean mask of the allowed next tokens
    constraint: Callable | None = None
    ignore_eos: bool = False  # keep going after the end-of-sequence token (benchmarks)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Step:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class Engine(Protocol):
    model_name: str
    tokenizer: object  # HF tokenizer
    chat_template: str | None
    context_length: int
    eos_ids: set[int]
    adapters: dict[str, str]  # served name -> path

    def generate(self, req: GenRequest) -> Iterator[Step]: ...


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max()
    return z - m - np.log(np.exp(z - m).sum())


def choose(logits: np.ndarray, req: GenRequest, previous: list[int], generated: list[int],
           rng: np.random.Generator) -> Step:
    """Penalties, the grammar mask, temperature/top-k/top-p/min-p, then a draw (or argmax).
    Logprobs are those of the model's distribution after penalties and the mask, before
    temperature and truncation (as vLLM reports them by default)."""
    p = req.params
    z = apply_penalties(logits, previous, p).astype(np.float64)
    if req.constraint is not None:
        mask = req.constraint(generated)
        z = np.where(mask[:z.size], z, -np.inf)
    if p.greedy:
        tok = int(np.argmax(z))
    else:
        f = filter_logits(z, p)
        probs = np.exp(f - f.max())
        probs /= probs.sum()
        tok = int(rng.choice(probs.size, p=probs))
    step = Step(tok)
    if req.top_logprobs is not None:
        lp = log_softmax(z)
        step.logprob = float(lp[tok])
        if req.top_logprobs:
            best = np.argsort(-lp, kind="stable")[:req.top_logprobs]
            step.top = [(int(i), float(lp[i])) for i in best]
    return step


class HFEngine:
    """transformers, one request at a time, LoRA adapters through PEFT (one base in memory)."""

    def __init__(self, model: str, adapters: dict[str, str] | None = None, device: str = "cpu"):

        from ..hf.models import load

        self.model_name = model
        self.adapters = dict(adapters or {})
        self.device = device
        m, tok = load(model)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            m = PeftModel.from_pretrained(m, self.adapters[names[0]], adapter_name=names[0])
            for n in names[1:]:
                m.load_adapter(self.adapters[n], adapter_name=n)
        self.model = m.to(device).eval()
        self.tokenizer = tok
        self.chat_template = tok.chat_template
        cfg = (m.base_model.model if self.adapters else m).config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 2048))
        eos = m.generation_config.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
        if tok.eos_token_id is not None:
            self.eos_ids.add(tok.eos_token_id)
        self.vocab_size = int(m.get_output_embeddings().weight.shape[0])
        self.lock = threading.Lock()  # one request at a time
        self.running = 0  # requests generating now (0 or 1 here); /health reports it
        self._grammar = None

    @property
    def grammar(self):
        """llguidance's view of the tokenizer, built on first use."""
        if self._grammar is None:
            from .grammar import GrammarFactory

            self._grammar = GrammarFactory(self.tokenizer, self.vocab_size)
        return self._grammar

    def generate(self, req: GenRequest) -> Iterator[Step]:
        if req.adapter is not None and req.adapter not in self.adapters:
            raise UserError(f"unknown adapter '{req.adapter}'.")
        with self.lock:
            self.running += 1
            try:
                yield from self._decode(req)
            finally:  # done, failed or cancelled: the KV cache (past) goes with this frame
                self.running -= 1

    def _decode(self, req: GenRequest) -> Iterator[Step]:
        from ..hf.models import next_logits_fn

        rng = np.random.default_rng(req.params.seed)
        ids, new = list(req.prompt_ids), []
        next_logits, state = next_logits_fn(self.model, self.device), {}
        with self._adapter_ctx(req.adapter):
            for _ in range(req.params.max_tokens):
                if req.cancelled.is_set():  # the client went away
                    return
                step = choose(next_logits(ids, state), req, ids, new, rng)
                yield step
                if step.token in self.eos_ids and not req.ignore_eos:
                    return
                ids.append(step.token)
                new.append(step.token)

    def _adapter_ctx(self, name):
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()
