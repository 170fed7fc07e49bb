"""Chat: templates, engines and the terminal loop.

The chat template is the model's own Jinja template (from its GGUF), rendered with the same
options transformers uses (sandboxed, `trim_blocks`, `lstrip_blocks`), so a conversation becomes
exactly the token ids that `tokenizer.apply_chat_template` gives (tests/test_pretrained.py).
"""

from __future__ import annotations

import sys
from typing import Callable

from .errors import UserError


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                **extra) -> str:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise UserError("chat templates need jinja2: 'uv sync --extra hf' or pip install "
                        "jinja2.") from None

    def raise_exception(message):
        raise UserError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt, **extra)


def pretrained_engine(model: str, engine: str):
    """(next_logits, tokenizer, chat_template, stop_ids) for a registry name or a GGUF path."""
    from pathlib import Path

    from . import models
    from .weights import load_gguf

    path = models.require(model) if model in models.REGISTRY else Path(model)
    if engine == "hf":
        return _hf_engine(path)
    pre = load_gguf(path)
    stop = [i for i in (pre.eos_id,) if i is not None]
    if engine == "numpy":
        from .numpy_engine.generate import next_token_logits
        from .numpy_engine.model import GPT

        m = GPT(pre.config, pre.params)
        fn: Callable = lambda ids, state: next_token_logits(m, ids, True, state)  # noqa: E731
    elif engine == "torch":
        from .torch_engine.generate import TorchLogits
        from .torch_engine.model import TorchGPT

        fn = TorchLogits(TorchGPT(pre.config, pre.params).eval().fuse_for_inference())
    else:
        raise UserError(f"--engine must be numpy, torch or hf, got '{engine}'.")
    return fn, pre.tokenizer, pre.chat_template, stop


def _hf_engine(path):
    """transformers reading the same GGUF; the cache lives in past_key_values."""
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizers import from_gguf
    from .tokenizers.pretrained import gguf_metadata

    meta = gguf_metadata(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval()

    @torch.inference_mode()
    def fn(ids, state):
        past, fed = state.get("past"), state.get("fed", 0)
        x = torch.tensor([ids[fed:] if past is not None else ids])
        out = hf(input_ids=x, past_key_values=past, use_cache=True)
        state.update(past=out.past_key_values, fed=len(ids))
        return out.logits[0, -1].float().numpy()

    stop = [meta["tokenizer.ggml.eos_token_id"]] if "tokenizer.ggml.eos_token_id" in meta else []
    return fn, from_gguf(path, meta), meta.get("tokenizer.chat_template"), stop


def chat_loop(model: str, engine: str, params, system: str | None = None, inp=input,
              out=sys.stdout) -> list[dict]:
    """Multi-turn conversation in the terminal; returns the transcript."""
    from .generation import stream

    fn, tok, template, stop = pretrained_engine(model, engine)
    if not template:
        raise UserError(f"{model} has no chat template; use 'llm-deeper generate' instead.")
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print("Chat with the model (an empty line or Ctrl-D ends).", file=sys.stderr)
    while True:
        try:
            line = inp("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        ids = tok.encode(render_chat(template, messages))
        out.write("assistant> ")
        gen = stream(fn, tok, ids, params, stop)
        text = []
        while True:
            try:
                piece = next(gen)
            except StopIteration:
                break
            text.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(text).strip()})
    return messages
