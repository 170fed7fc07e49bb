"""`llm-deeper quantize`: store a model's weights in a smaller number format, for real.

Two kinds of output, chosen by --out:

    --out model.gguf   a GGUF file (llama.cpp, transformers, our engines read it): f32, f16,
                       q8_0, q4_0 or q4_1, quantized by our block quantizers
                       (quantization/gguf_write.py). Llama-architecture models only.
    --out DIR          a quantized checkpoint directory in any format of quantization.FORMATS
                       (int8, int8_asym, int4, nf4, fp8_e4m3, fp8_e5m2, q8_0, q4_0, q4_1), with
                       the format's options (--quant-option group_size=32, per_channel=true,
                       double_quant=true); every --checkpoint command loads it, dequantized
                       (quantization/qcheckpoint.py).

The source is a registry model or GGUF file (--model smollm2-135m) or a float checkpoint of ours
(--checkpoint DIR). Mistakes are one sentence and exit code 2, with nothing written: an unknown
format, an option the format does not take, a group size that does not divide a row, a source
that is already quantized, a format GGUF cannot hold, an --out that already exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import UserError

HELP = "store a model's weights quantized: a GGUF file (q8_0, q4_0, ...) or a checkpoint dir"
GGUF_ONLY = ("f32", "f16")


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a registry name (smollm2-135m) or a GGUF path")
    src.add_argument("--checkpoint", help="a float checkpoint directory of ours")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="q8_0, q4_0, q4_1 (a GGUF file or a directory); f16, f32 (GGUF "
                   "only); int8, int8_asym, int4, nf4, fp8_e4m3, fp8_e5m2 (a directory only)")
    p.add_argument("--quant-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a format option, e.g. group_size=32, per_channel=true, "
                   "double_quant=true (repeatable; directory formats only)")
    p.add_argument("--out", required=True,
                   help="a .gguf file, or else a directory to create (never overwritten)")
    p.add_argument("--verbose", action="store_true",
                   help="print every matrix with its bits/param (directory outputs)")


def check_request(fmt: str, options: dict, out: Path) -> bool:
    """Every refusal that needs no model, before the model is read. Returns: GGUF output?"""
    from ..quantization.formats import FORMATS, quantize
    from ..quantization.gguf_write import gguf_format

    if fmt not in FORMATS and fmt not in GGUF_ONLY:
        raise UserError(f"unknown quantization format '{fmt}'; choose one of "
                        f"{', '.join([*FORMATS, *GGUF_ONLY])}.")
    to_gguf = out.suffix.lower() == ".gguf"
    if to_gguf:
        gguf_format(fmt)
        if options:
            raise UserError("GGUF's block formats have no options (blocks of 32 values, a "
                            "float16 scale each): drop --quant-option or write a directory.")
    elif fmt in GGUF_ONLY:
        raise UserError(f"'{fmt}' is written as GGUF only: give an --out ending in .gguf (a "
                        "float checkpoint directory is what train writes).")
    else:  # the options, on a small matrix: an unknown name or a bad value is caught now
        quantize(np.zeros((2, 384), np.float32), fmt, **options)
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out (nothing was "
                        "overwritten).")
    return to_gguf


def load_source(args):
    """(name, config, params, tokenizer, extras) of --model or --checkpoint."""
    if args.model:
        from ..pretrained.models import gguf_file
        from ..pretrained.weights import load_gguf

        path = gguf_file(args.model, "quantize reads GGUF files and checkpoints of ours")
        pre = load_gguf(path)
        extras = {"gguf": path, "chat_template": pre.chat_template, "bos_id": pre.bos_id,
                  "eos_id": pre.eos_id, "name": pre.metadata.get("general.name", args.model)}
        return args.model, pre.config, pre.params, pre.tokenizer, extras
    from ..checkpoint import load_checkpoint
    from ..quantization.qcheckpoint import is_quantized, read_meta

    if is_quantized(args.checkpoint):
        raise UserError(f"{args.checkpoint} is already quantized "
                        f"({read_meta(args.checkpoint).get('format')}); quantize the float "
                        "checkpoint it came from (quantizing twice adds both errors).")
    cfg, params, tok, _ = load_checkpoint(args.checkpoint)
    lora = sorted(k for k in params if k.endswith((".lora_A", ".lora_B")))
    if lora:
        raise UserError(f"{args.checkpoint} holds LoRA factors ({lora[0]}, ...): merge them "
                        "first (llm-deeper merge), then quantize the merged model.")
    eos = (getattr(tok, "special_tokens", None) or {}).get("<|endoftext|>")
    extras = {"chat_template": None, "bos_id": eos, "eos_id": eos,
              "name": Path(args.checkpoint).resolve().name}
    return args.checkpoint, cfg, params, tok, extras


def run(args) -> int:
    from ..quantization.model import parse_options

    fmt = args.format.lower()
    out = Path(args.out)
    options = parse_options(args.quant_option)
    to_gguf = check_request(fmt, options, out)
    name, cfg, params, tok, extras = load_source(args)
    n = sum(int(np.size(v)) for v in params.values())
    if to_gguf:
        written, after, weight_bytes, note = _gguf(out, fmt, cfg, params, tok, extras)
    else:
        written, after, weight_bytes, note = _directory(out, fmt, options, name, cfg, params,
                                                        tok, extras, args.verbose)
    print(f"{name} -> {fmt}{_options(options)}: {4 * n:,} bytes as float32 -> {after:,} bytes "
          f"({8 * weight_bytes / n:.3f} bits/param over {n:,} parameters){note}, "
          f"written to {written}")
    return 0


def _options(options: dict) -> str:
    return "".join(f" {k}={v}" for k, v in options.items())


def _gguf(out, fmt, cfg, params, tok, extras):
    from ..quantization.gguf_write import (
        check_llama,
        gguf_fields_from,
        tokenizer_fields,
        write_gguf,
    )

    check_llama(cfg)  # before the tokenizer is read
    if extras.get("gguf"):
        fields = gguf_fields_from(extras["gguf"])
    else:
        fields = tokenizer_fields(tok, extras["bos_id"], extras["eos_id"])
    r = write_gguf(out, cfg, params, fmt, tokenizer=fields, name=str(extras["name"]))
    note = ""
    if r["f16_fallback"]:
        note = (f"; {len(r['f16_fallback'])} matrices with rows not a multiple of 32 "
                f"stored as F16 (e.g. {r['f16_fallback'][0]})")
    if not fields:
        note += "; no tokenizer metadata (this tokenizer has no GGUF form)"
    return r["path"], r["file_bytes"], r["weight_bytes"], note


def _directory(out, fmt, options, name, cfg, params, tok, extras, verbose):
    from ..quantization.qcheckpoint import quantize_params, save_quantized

    log = (lambda line: print(line, file=sys.stderr)) if verbose else None
    qtensors, floats = quantize_params(params, fmt, log=log, **options)
    meta = save_quantized(out, cfg, qtensors, floats, tok, fmt=fmt, options=options,
                          source=str(name), extra_meta={k: extras[k] for k in (
                              "chat_template", "bos_id", "eos_id")})
    on_disk = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return str(out), on_disk, meta["weight_bytes"], ""
