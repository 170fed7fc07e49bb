"""`llm-deeper convert`: a fine-tuned result in another runtime's format."""

from __future__ import annotations

HELP = "convert a fine-tuned result to another runtime's format"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="convert_command", required=True, metavar="<subcommand>")
    q = sub.add_parser("mlx-adapter", help="a PEFT LoRA adapter -> mlx-lm's adapter format")
    q.add_argument("--adapter", required=True, help="the PEFT adapter directory")
    q.add_argument("--out", required=True, help="the mlx-lm adapter directory to write")


def run(args) -> None:
    from ..hf.mlx import peft_to_mlx_adapter

    out = peft_to_mlx_adapter(args.adapter, args.out)
    print(f"mlx-lm adapter written to {out}; run it with: mlx_lm.generate --model <the HF "
          f"directory of the base> --adapter-path {out} --prompt ...")
