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
    p.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="native: new tokens per step, decodes first; longer prompts are "
                   "prefilled in chunks (smaller: smoother streams, larger: faster first token)")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="native: do not share the KV blocks of a common prompt beginning")
    p.add_argument("--kv-cache-gb", type=float, default=1.0,
                   help="native: memory for the paged KV cache")
    p.add_argument("--block-size", type=int, default=16, help="native: token slots per block")
    p.add_argument("--quant", choices=["int8"], default=None,
                   help="native, CPU: INT8 weights and activations (docs/quantization.md)")
    p.add_argument("--max-sequences-per-request", type=int, default=16,
                   help="most sequences one request may ask for (prompts x n)")
    p.add_argument("--max-body-mb", type=float, default=4.0,
                   help="largest request body, whatever its framing (413 beyond)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections and requests at once (503 beyond)")
    p.add_argument("--keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a request's headers may take to arrive")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds running requests may finish after SIGTERM or Ctrl-C")
    p.add_argument("--vllm-args", default="", metavar="'OPTIONS'",
                   help="vllm: more options for 'vllm serve', one quoted string, e.g. "
                   "'--tensor-parallel-size 2 --max-model-len 8192 --gpu-memory-utilization 0.9'")


def run(args) -> None:
    from ..serve.launch import ServeOptions, serve

    serve(ServeOptions(
        model=args.model, engine=args.engine, host=args.host, port=args.port,
        api_key=args.api_key, lora_modules=tuple(args.lora_modules),
        served_name=args.served_model_name, device=args.device, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        kv_cache_gb=args.kv_cache_gb, block_size=args.block_size, quant=args.quant,
        max_sequences_per_request=args.max_sequences_per_request, max_body_mb=args.max_body_mb,
        max_connections=args.max_connections, keep_alive=args.keep_alive,
        header_timeout=args.header_timeout, shutdown_grace=args.shutdown_grace,
        vllm_args=args.vllm_args))
