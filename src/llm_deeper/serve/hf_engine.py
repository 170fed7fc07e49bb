"""The `hf` engine: transformers, one request at a time, LoRA adapters through PEFT (one base
model in memory, the adapter switched per request)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np

from ..errors import UserError
from .engine import GenRequest, Step, next_step


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
        self._finishing = threading.Event()
        self._grammar = None

    @property
    def grammar(self):
        """llguidance's view of the tokenizer, built on first use."""
        if self._grammar is None:
            from .grammar import GrammarFactory

            self._grammar = GrammarFactory(self.tokenizer, self.vocab_size)
        return self._grammar

    def finish_all(self) -> None:
        """End the running request (and any that start) as if it had reached max_tokens."""
        self._finishing.set()

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
                if req.cancelled.is_set() or self._finishing.is_set():  # gone, or shutting down
                    return
                step = next_step(next_logits(ids, state), req, ids, new, rng)
                yield step
                if step.token in self.eos_ids and not req.ignore_eos:
                    return
                ids.append(step.token)
                new.append(step.token)

    def _adapter_ctx(self, name):
        if not self.adapters:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()
