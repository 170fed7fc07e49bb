"""`llm-deeper serve`: an OpenAI-compatible API server (serve/)."""

from __future__ import annotations

import os

HELP = ("an OpenAI-compatible API server (chat, completions, streaming, tool calls, "
        "LoRA adapters)")


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m", help="registry name, HF dir or hub id")
    p.add_argument("--engine", choices=["native", "hf", "vllm"], default="native",
                   help="native: our continuous-batching engine (paged KV cache); hf: "
                   "transformers, one request at a time, serves adapters; vllm: runs "
                   "'vllm serve' (CUDA)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    # The default comes from the environment: the help must not print a secret.
    p.add_argument("--api-key", default=os.environ.get("LLM_DEEPER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLM_DEEPER_API_KEY, "
                   "else no key)")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                   help="PEFT adapters served as models of their own, chosen by 'model'")
    p.add_argument("--served-model-name", default=None,
                   help="the base model's id in the API (default: the last part of --model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="native: most requests decoded together (1 = batching off)")
    p.add_argument("--kv-cache-gb", type=float, default=1.0,
                   help="native: memory for the paged KV cache")
    p.add_argument("--block-size", type=int, default=16, help="native: token slots per block")


def run(args) -> None:
    from ..serve.launch import serve

    serve(args.model, args.engine, args.host, args.port, args.api_key, args.lora_modules,
          args.served_model_name, args.device, args.max_num_seqs, args.kv_cache_gb,
          args.block_size)
