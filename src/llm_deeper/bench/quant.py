"""`llm-deeper bench quant`: every weight format on SmolLM2-135M side by side: perplexity, weight
bytes and how often greedy decoding still picks float32's tokens.

Each format quantizes every weight matrix of the model and dequantizes it back to float32
(quantization/model.py `fake_quantize`, or quantization/gptq_model.py for "+gptq"); the model
then runs in float32, so the numbers are those of a model stored in the format, not its speed.

* perplexity: works validation split (the last 10 % of `load_text("works")`), its first
  --max-tokens tokens (8,192), window 512, stride 256 (the protocol of docs/benchmarks.md);
* weight bytes: every 2-D weight at its size in the format, norms in float32 (fake_quantize);
* greedy agreement: 5 fixed chat prompts (SmolLM2's own chat template), --new-tokens greedy
  tokens each (64); the share of the 5 x 64 positions where the format's token equals fp32's,
  and the mean index of the first token that differs (= new_tokens when none does). Each model
  continues its own text, so after a first difference the rest mostly differs too.

Our "fp32" is itself the dequantized Q4_1 GGUF the package ships (its token embedding Q8_0):
every figure is relative to that model, not to the original bfloat16 checkpoint. GPTQ is
calibrated on the first --gptq-tokens tokens of the works' *train* split (the first 90 %).
INT4 at group size 128 cannot split SmolLM2's 576-wide rows (576 = 4.5 x 128): g32 and g64 only.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .common import json_line

PRESETS = {  # name -> (format, options, gptq)
    "fp32": (None, {}, False), "bf16": ("bf16", {}, False), "fp16": ("fp16", {}, False),
    "int8-pc": ("int8", {"per_channel": True}, False),
    "int4-g32": ("int4", {"group_size": 32}, False),
    "int4-g64": ("int4", {"group_size": 64}, False),
    "int4-g32-gptq": ("int4", {"group_size": 32}, True),
    "int4-g64-gptq": ("int4", {"group_size": 64}, True),
    "nf4": ("nf4", {}, False), "nf4-dq": ("nf4", {"double_quant": True}, False),
    "fp8-e4m3-pc": ("fp8_e4m3", {"per_channel": True}, False),
    "q8_0": ("q8_0", {}, False), "q4_0": ("q4_0", {}, False), "q4_1": ("q4_1", {}, False),
}
DEFAULT = ",".join(PRESETS)
QUICK = "fp32,int8-pc"
NOTE = "fp32 = the dequantized Q4_1 GGUF (token embedding Q8_0); every figure is relative to it"
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "Who wrote Romeo and Juliet, and what is it about?",
)


def parse_format(spec: str) -> tuple[str | None, dict, bool]:
    """A preset name (PRESETS) or FORMAT[:NAME=VALUE...][:gptq], e.g. int4:group_size=32:gptq."""
    if spec in PRESETS:
        return PRESETS[spec]
    from ..quantization.formats import FORMATS
    from ..quantization.model import parse_options

    fmt, *rest = spec.split(":")
    gptq = "gptq" in rest
    if fmt not in FORMATS:
        raise UserError(f"'{spec}' is neither a preset ({', '.join(PRESETS)}) nor "
                        f"FORMAT[:NAME=VALUE...][:gptq] with a format of {', '.join(FORMATS)}.")
    options = parse_options([r for r in rest if r != "gptq"])
    if gptq and fmt != "int4":
        raise UserError(f"'{spec}': GPTQ writes INT4 codes; use int4:group_size=32:gptq.")
    return fmt, options, gptq


def _greedy(model, prompts, n_new: int) -> np.ndarray:
    import torch

    from ..torch_engine.generate import greedy_batch

    return np.stack([greedy_batch(model, torch.tensor([ids]), n_new)[0].numpy()
                     for ids in prompts])


def agreement(tokens: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(share of positions equal to ref, mean index of the first difference per prompt)."""
    same = tokens == ref
    first = [int(np.argmin(row)) if not row.all() else len(row) for row in same]
    return float(same.mean()), float(np.mean(first))


def run(model: str = "smollm2-135m", formats: str = DEFAULT, max_tokens: int = 8192,
        new_tokens: int = 64, gptq_tokens: int = 2048, window: int = 512, stride: int = 256,
        log=print, pretrained=None) -> list[dict]:
    """One JSON line per format, then the markdown table; returns the rows. `pretrained`: the
    model already loaded by `load_gguf` (tests), else `model` is read."""
    from ..chat.template import render_chat
    from ..data import load_text
    from ..evaluation.perplexity import perplexity, torch_logprobs
    from ..pretrained.models import gguf_file
    from ..pretrained.weights import load_gguf
    from ..quantization.gptq_model import calibration_ids, gptq_model
    from ..quantization.model import fake_quantize
    from ..torch_engine.model import TorchGPT

    specs = [s for s in formats.split(",") if s]
    parsed = {s: parse_format(s) for s in specs}
    if not specs:
        raise UserError("--formats is empty; give e.g. fp32,int8-pc,int4-g32.")
    if max_tokens < 2 or new_tokens < 1:
        raise UserError("--max-tokens must be >= 2 and --new-tokens >= 1.")
    pre = pretrained or load_gguf(gguf_file(model, "bench quant reads GGUF files"))
    cfg, tok = pre.config, pre.tokenizer
    text = load_text("works")
    cut = int(len(text) * 0.9)
    val = np.asarray(tok.encode(text[cut:][:12 * max_tokens]))[:max_tokens]
    if not pre.chat_template:
        raise UserError(f"{model} has no chat template; bench quant prompts in chat form.")
    prompts = [tok.encode(render_chat(pre.chat_template, [{"role": "user", "content": p}]))
               for p in PROMPTS]
    calib = None
    log(f"bench quant: {model}, perplexity on works val ({len(val):,} tokens, window {window}, "
        f"stride {stride}), {len(PROMPTS)} chat prompts x {new_tokens} greedy tokens; {NOTE}.")

    def evaluate(params):
        m = TorchGPT(cfg, params).eval()
        ppl = perplexity(torch_logprobs(m), val, min(window, len(val)), stride).perplexity
        return ppl, _greedy(m, prompts, new_tokens)

    ref_ppl, ref_tokens = evaluate(pre.params)
    fp32_bytes = sum(np.asarray(w).nbytes for w in pre.params.values())
    rows = []
    for spec in specs:
        fmt, options, gptq = parsed[spec]
        if fmt is None:
            nbytes, ppl, tokens = fp32_bytes, ref_ppl, ref_tokens
        else:
            if gptq:
                calib = calib if calib is not None else calibration_ids(tok, text[:cut],
                                                                        gptq_tokens)
                params, nbytes = gptq_model(cfg, pre.params, calib,
                                            group_size=options.get("group_size", 64))
            else:
                params, nbytes = fake_quantize(pre.params, fmt, **options)
            ppl, tokens = evaluate(params)
            del params
        agree, first = agreement(tokens, ref_tokens)
        row = {"bench": "quant", "model": model, "format": spec, "fmt": fmt or "fp32",
               "options": options, "gptq": gptq, "weight_bytes": int(nbytes),
               "bits_per_param": round(8 * nbytes / sum(np.size(w) for w in pre.params.values()),
                                       3),
               "perplexity": round(ppl, 4), "perplexity_change_pct":
               round(100 * (ppl / ref_ppl - 1), 2), "greedy_agreement": round(agree, 4),
               "first_divergence_mean": round(first, 1), "tokens": int(len(val)),
               "new_tokens": new_tokens, "prompts": len(PROMPTS),
               "gptq_tokens": gptq_tokens if gptq else 0, "note": NOTE}
        rows.append(row)
        log(json_line(row))
    log(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| format | weight MB | bits/param | perplexity | change | greedy agreement | "
             "first divergence (mean) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        change = "-" if r["fmt"] == "fp32" else f"{r['perplexity_change_pct']:+.1f} %"
        lines.append(f"| {r['format']} | {r['weight_bytes'] / 1e6:.0f} | {r['bits_per_param']:.2f}"
                     f" | {r['perplexity']:.2f} | {change} | {100 * r['greedy_agreement']:.1f} % "
                     f"| {r['first_divergence_mean']:.1f} / {r['new_tokens']} |")
    return "\n".join(lines + [f"({NOTE}.)"])
