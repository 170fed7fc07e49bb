"""An OpenAI-compatible server, in parts:

    protocol.py       the API's request and response shapes (pydantic), the error body
    prompts.py        a request -> the prompt's token ids, sampling parameters, grammar, adapter
    app.py            the FastAPI app: routes, errors, auth, limits
    streaming.py      engine steps -> text, logprobs, JSON answers and server-sent events
    grammar.py        constrained decoding (JSON schemas, forced tool calls) with llguidance
    engine.py         what the app asks of an engine; the request, the step, the sampler call
    native.py         our engine: continuous batching (scheduler.py) over a paged KV cache
                      (block_manager.py, torch_engine/paged.py)
    hf_engine.py      transformers + PEFT, one request at a time
    launch.py         `llm-deeper serve`: engine + app + uvicorn (or `vllm serve`)
    process.py        the server as a child process, for lessons and tests

Generated text is split into content, reasoning and tool calls by llm_deeper/chat/reply.py, the
parser the chat loop and the evaluator use too.
"""
