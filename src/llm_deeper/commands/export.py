"""`llm-deeper export`: a checkpoint or a pretrained model as an HF directory (transformers,
vLLM and mlx-lm load it). `llm-deeper models export-hf NAME` runs the same code."""

from __future__ import annotations

HELP = "write an HF directory (transformers, vLLM, mlx-lm load it)"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory of either engine")
    src.add_argument("--model", help="a registry name (smollm2-135m) or a GGUF path")
    p.add_argument("--format", choices=["hf"], default="hf", help="the format to write")
    p.add_argument("--out", required=True, help="the directory to write")


def run(args) -> int:
    from ..pretrained.weights import export_hf, load_gguf

    if args.checkpoint:
        from ..checkpoint import load_checkpoint

        cfg, params, tok, _ = load_checkpoint(args.checkpoint)
        special = getattr(tok, "special_tokens", {}) or {}
        eos = special.get("<|endoftext|>")
        out = export_hf(args.out, cfg, params, tok, bos_id=eos, eos_id=eos)
    else:
        from ..pretrained import models

        pre = load_gguf(models.gguf_file(args.model, "export reads GGUF files"))
        out = export_hf(args.out, pre.config, pre.params, pre.tokenizer,
                        chat_template=pre.chat_template, bos_id=pre.bos_id, eos_id=pre.eos_id)
    print(f"HF directory written to {out}")
    return 0
