"""Chat templates: a conversation -> the text the model was trained on.

The template is the model's own Jinja template (from its GGUF or tokenizer_config.json), rendered
with the options transformers uses (sandboxed, `trim_blocks`, `lstrip_blocks`), so a conversation
becomes exactly the token ids that `tokenizer.apply_chat_template` gives
(tests/test_pretrained.py).
"""

from __future__ import annotations

from ..errors import UserError


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
