"""`llm-deeper merge`: fold a PEFT LoRA adapter into its base model, as an HF directory."""

from __future__ import annotations

HELP = "fold a PEFT LoRA adapter into its base model (an HF dir)"


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="the base: registry name, HF dir, hub id")
    p.add_argument("--adapter", required=True, help="the PEFT adapter directory")
    p.add_argument("--out", required=True, help="where to write the merged HF model")


def run(args) -> None:
    from ..hf.models import merge

    print(f"merged model written to {merge(args.model, args.adapter, args.out)}")
