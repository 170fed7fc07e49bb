"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions,
/v1/completions, /health.

The request path: validate (pydantic, protocol.py) -> render the conversation with the model's
chat template (tools shown in the system prompt in the format of tools.py when the template has
no tools section) -> the engine generates token by token -> stop strings, then
DeltaParser splits content / reasoning_content / tool_calls -> JSON, or server-sent events
(`data: {chunk}\\n\\n` ... `data: [DONE]`) when `stream` is set.

Every error is an OpenAI error object with a 4xx status (401 bad key, 404 unknown model,
413 body too large, 400 anything else about the request).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from ..sampling import SamplingParams, StopStrings
from .engine import Engine, GenRequest, Step
from .parsing import DeltaParser, split_text
from .protocol import ChatRequest, CompletionRequest, error_body, new_id, now

MAX_BODY_BYTES = 4 * 1024 * 1024


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = \
            status, message, param, type_, code


# --------------------------------------------------------------------------- prompts
def render_messages(engine: Engine, req: ChatRequest) -> str:
    from ..chat import render_chat
    from ..tools import Tool, format_call, tools_system_prompt

    msgs: list[dict] = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        if m.role == "assistant" and m.tool_calls:
            text += "".join(format_call(c.function.name, _loads_args(c.function.arguments))
                            for c in m.tool_calls)
        msgs.append({"role": role, "content": text})
    if req.tools and req.tool_choice != "none":
        tools = [Tool(t.function.name, t.function.description or "",
                      t.function.parameters or {"type": "object", "properties": {}}, None)
                 for t in req.tools]
        listing = tools_system_prompt(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": listing + "\n" + msgs[0]["content"]}
        else:
            msgs.insert(0, {"role": "system", "content": listing})
    if not engine.chat_template:
        raise APIError(400, f"model {engine.model_name} has no chat template; use "
                       "/v1/completions.", "messages")
    return render_chat(engine.chat_template, msgs, add_generation_prompt=True)


def _loads_args(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        raise APIError(400, "tool_calls[].function.arguments must be a JSON object string.",
                       "messages") from None
    if not isinstance(v, dict):
        raise APIError(400, "tool_calls[].function.arguments must be a JSON object.", "messages")
    return v


def chat_grammar(engine: Engine, req: ChatRequest) -> str | None:
    """The llguidance grammar a request asks for, or None (free text)."""
    rf, choice = req.response_format, req.tool_choice
    forced = choice == "required" or not isinstance(choice, (str, type(None)))
    if forced:
        if not req.tools:
            raise APIError(400, "tool_choice requires tools.", "tool_choice")
        only = None if choice == "required" else choice.function.get("name")
        if choice != "required" and not only:
            raise APIError(400, "tool_choice.function.name is required.", "tool_choice")
        tools = [{"name": t.function.name, "parameters": t.function.parameters} for t in req.tools]
        try:
            return engine.grammar.tool_calls(tools, only)
        except UserError as exc:
            raise APIError(400, str(exc), "tool_choice") from None
    if rf is None or rf.type == "text":
        return None
    schema = None
    if rf.type == "json_schema":
        if rf.json_schema is None or not isinstance(rf.json_schema.schema_, dict):
            raise APIError(400, "response_format json_schema needs json_schema.schema.",
                           "response_format")
        schema = rf.json_schema.schema_
    try:
        grammar = engine.grammar.json_schema(schema)
        engine.grammar.constraint(grammar)  # compile once here: a bad schema is a 400
    except (UserError, ValueError) as exc:
        raise APIError(400, f"response_format: {exc}", "response_format") from None
    return grammar


def encode(engine: Engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def sampling(engine: Engine, req, prompt_len: int, max_tokens: int | None, seed_offset=0):
    room = engine.context_length - prompt_len
    if room <= 0:
        raise APIError(400, f"the prompt is {prompt_len} tokens; this model's context is "
                       f"{engine.context_length}.", "messages", code="context_length_exceeded")
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} + the prompt's {prompt_len} tokens exceed "
                       f"this model's context of {engine.context_length}.", "max_tokens",
                       code="context_length_exceeded")
    top_k = req.top_k if req.top_k and req.top_k > 0 else None
    try:
        return SamplingParams(
            max_tokens=max_tokens or room, temperature=req.temperature,
            top_k=top_k, top_p=req.top_p, min_p=req.min_p or None,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, stop=req.stop_list(),
            # any integer is a seed (numpy takes 0 .. 2^64 - 1)
            seed=None if req.seed is None else (req.seed + seed_offset) % 2**64)
    except UserError as exc:
        raise APIError(400, str(exc)) from None


def resolve_adapter(engine: Engine, model: str, served: str) -> str | None:
    if model == served:
        return None
    if model in engine.adapters:
        return model
    raise APIError(404, f"The model `{model}` does not exist.", "model", code="model_not_found")


# --------------------------------------------------------------------------- generation
class Run:
    """One choice being generated: token steps in, text (after stop strings) out."""

    def __init__(self, engine: Engine, gen: GenRequest):
        self.engine, self.gen = engine, gen
        self.tokens: list[int] = []
        self.steps: list[Step] = []
        self.stops = StopStrings(gen.params.stop)
        self.text = ""
        self.finish = "length"
        self.marks: list[int] = []  # len(steps) when each piece was yielded (for logprobs)

    def pieces(self):
        """Yields new text pieces; sets .finish and .text."""
        tok = self.engine.tokenizer
        for step in self.engine.generate(self.gen):
            if step.token in self.engine.eos_ids and not self.gen.ignore_eos:
                self.finish = "stop"
                break
            self.tokens.append(step.token)
            self.steps.append(step)
            full = tok.decode(self.tokens, skip_special_tokens=True)
            piece, stopped = self.stops.feed(full)
            if piece:
                self.marks.append(len(self.steps))
                yield piece
            if stopped:
                self.finish = "stop"
                self.text = full[:self.stops.emitted]
                return
        full = tok.decode(self.tokens, skip_special_tokens=True)
        tail = self.stops.flush(full)
        self.text = full
        if tail:
            self.marks.append(len(self.steps))
            yield tail


async def iterate_in_thread(gen) -> AsyncIterator:
    """Run a blocking generator in a worker thread; yield its items here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def work():
        try:
            for item in gen:
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = await queue.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def logprobs_content(engine: Engine, steps: list[Step]) -> list[dict]:
    tok = engine.tokenizer

    def entry(t, lp):
        s = tok.decode([t])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return [{**entry(s.token, s.logprob),
             "top_logprobs": [entry(t, lp) for t, lp in (s.top or [])]} for s in steps]


def completion_logprobs(engine: Engine, run: "Run", offset: int = 0) -> dict:
    """The legacy /v1/completions shape: parallel lists, one entry per generated token."""
    tok = engine.tokenizer
    tokens, offsets, pos = [], [], offset
    for s in run.steps:
        piece = tok.decode([s.token])
        tokens.append(piece)
        offsets.append(pos)
        pos += len(piece)
    return {"tokens": tokens, "token_logprobs": [s.logprob for s in run.steps],
            "top_logprobs": [{tok.decode([t]): lp for t, lp in (s.top or [])}
                             for s in run.steps],
            "text_offset": offsets}


async def run_all(engine: Engine, gens: list[GenRequest]) -> list[Run]:
    """Generate several choices at once (the native engine batches them); returns the runs."""
    runs = [Run(engine, g) for g in gens]

    async def drain(run):
        async for _ in iterate_in_thread(run.pieces()):
            pass

    try:
        await asyncio.gather(*(drain(r) for r in runs))
    finally:  # one failed or the request was dropped: stop the others too
        for g in gens:
            g.cancelled.set()
    return runs


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


# --------------------------------------------------------------------------- the app
def create_app(engine: Engine, served_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES):
    app = FastAPI(title="llm-deeper", version="1", docs_url=None, redoc_url=None)

    def err(status, message, param=None, type_="invalid_request_error", code=None):
        return JSONResponse(error_body(message, type_, param, code), status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return err(exc.status, exc.message, exc.param, exc.type, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        return err(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}",
                   ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return err(exc.status_code, str(exc.detail), type_=kind)

    @app.exception_handler(UserError)
    async def _user(request, exc: UserError):
        return err(400, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # a bug: still an OpenAI-shaped answer
        return err(500, f"internal error: {type(exc).__name__}", type_="server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body_bytes):
            return err(413, f"request body larger than {max_body_bytes} bytes.")
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return err(401, "invalid or missing API key (Authorization: Bearer ...).",
                           type_="authentication_error", code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        out = {"status": "ok", "running": getattr(engine, "running", 0)}
        if hasattr(engine, "kv_blocks_used"):  # the native engine's paged cache
            out["kv_blocks_used"] = engine.kv_blocks_used
        return out

    @app.get("/v1/models")
    async def list_models():
        created = now()
        data = [{"id": served_name, "object": "model", "created": created,
                 "owned_by": "llm-deeper", "root": engine.model_name, "parent": None,
                 "max_model_len": engine.context_length}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "llm-deeper",
                  "root": path, "parent": served_name, "max_model_len": engine.context_length}
                 for name, path in engine.adapters.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        adapter = resolve_adapter(engine, req.model, served_name)
        grammar = chat_grammar(engine, req)
        prompt = render_messages(engine, req)
        ids = encode(engine, prompt)
        want = req.max_completion_tokens or req.max_tokens
        tools = bool(req.tools) and req.tool_choice != "none"
        cid, created = new_id("chatcmpl"), now()
        gens = [GenRequest(ids, sampling(engine, req, len(ids), want, i), adapter,
                           top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                           constraint=engine.grammar.constraint(grammar) if grammar else None,
                           ignore_eos=req.ignore_eos)
                for i in range(req.n)]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _chat_stream(engine, gens, cid, created, req.model, tools, len(ids),
                             include_usage, request),
                media_type="text/event-stream")
        choices, completion = [], 0
        for i, run in enumerate(await run_all(engine, gens)):
            completion += len(run.tokens)
            content, reasoning, calls = split_text(run.text, tools)
            msg: dict = {"role": "assistant", "content": content or (None if calls else "")}
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            if calls:
                msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                    "name": c["name"], "arguments": c["arguments"]}} for c in calls]
            choices.append({"index": i, "message": msg,
                            "logprobs": {"content": logprobs_content(engine, run.steps)}
                            if req.logprobs else None,
                            "finish_reason": "tool_calls" if calls else run.finish})
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": choices, "usage": usage(len(ids), completion)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        adapter = resolve_adapter(engine, req.model, served_name)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or any(not p for p in prompts):
            raise APIError(400, "prompt must be a non-empty string.", "prompt")
        cid, created = new_id("cmpl"), now()
        jobs = []
        for p in prompts:
            ids = encode(engine, p)
            if not ids:
                raise APIError(400, "prompt is empty after tokenization.", "prompt")
            for i in range(req.n):
                jobs.append((p, ids, GenRequest(
                    ids, sampling(engine, req, len(ids), req.max_tokens, i), adapter,
                    top_logprobs=req.logprobs, ignore_eos=req.ignore_eos)))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_completion_stream(engine, jobs, cid, created, req.model,
                                                        req.echo, include_usage, request),
                                     media_type="text/event-stream")
        choices, prompt_total, completion = [], 0, 0
        runs = await run_all(engine, [g for _, _, g in jobs])
        for i, ((p, ids, g), run) in enumerate(zip(jobs, runs)):
            prompt_total += len(ids)
            completion += len(run.tokens)
            choices.append({"index": i, "text": (p if req.echo else "") + run.text,
                            "logprobs": completion_logprobs(engine, run, len(p) if req.echo
                                                            else 0)
                            if req.logprobs is not None else None,
                            "finish_reason": run.finish})
        return {"id": cid, "object": "text_completion", "created": created, "model": req.model,
                "choices": choices, "usage": usage(prompt_total, completion)}

    return app


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _chat_stream(engine, gens, cid, created, model, tools, prompt_len, include_usage,
                       request):
    def chunk(i, delta, finish=None, logprobs=None):
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": [{"index": i, "delta": delta,
                                                  "logprobs": logprobs,
                                                  "finish_reason": finish}]})

    completion = 0
    try:
        for i, g in enumerate(gens):
            yield chunk(i, {"role": "assistant", "content": ""})
            run, parser, n_calls, text = Run(engine, g), DeltaParser(tools), 0, ""
            want_lp, sent, k = g.top_logprobs is not None, 0, 0

            def lp(upto):  # the logprobs of the tokens since the last chunk that carried some
                nonlocal sent
                if not want_lp or upto <= sent:
                    return None
                out = {"content": logprobs_content(engine, run.steps[sent:upto])}
                sent = upto
                return out

            async for piece in iterate_in_thread(run.pieces()):
                text += piece
                upto, k = run.marks[k], k + 1
                for kind, value in parser.feed(text):
                    if kind == "tool_call":
                        yield chunk(i, {"tool_calls": [{
                            "index": n_calls, "id": value["id"], "type": "function",
                            "function": {"name": value["name"],
                                         "arguments": value["arguments"]}}]})
                        n_calls += 1
                    elif value:
                        key = "content" if kind == "content" else "reasoning_content"
                        yield chunk(i, {key: value}, logprobs=lp(upto))
            for kind, value in parser.feed(text, final=True):
                if kind in ("content", "reasoning") and value:
                    yield chunk(i, {"content" if kind == "content" else "reasoning_content":
                                    value}, logprobs=lp(len(run.steps)))
            completion += len(run.tokens)
            yield chunk(i, {}, "tool_calls" if n_calls else run.finish,
                        logprobs=lp(len(run.steps)))
        if include_usage:
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [],
                        "usage": usage(prompt_len, completion)})
        yield b"data: [DONE]\n\n"
    finally:  # the client went away (or we finished): stop generating, free the cache
        for g in gens:
            g.cancelled.set()


async def _completion_stream(engine, jobs, cid, created, model, echo, include_usage, request):
    prompt_total = completion = 0
    try:
        for i, (p, ids, g) in enumerate(jobs):
            def chunk(text, finish=None):
                return _sse({"id": cid, "object": "text_completion", "created": created,
                             "model": model, "choices": [{"index": i, "text": text,
                                                          "logprobs": None,
                                                          "finish_reason": finish}]})
            if echo:
                yield chunk(p)
            run = Run(engine, g)
            async for piece in iterate_in_thread(run.pieces()):
                yield chunk(piece)
            prompt_total += len(ids)
            completion += len(run.tokens)
            yield chunk("", run.finish)
        if include_usage:
            yield _sse({"id": cid, "object": "text_completion", "created": created,
                        "model": model, "choices": [], "usage": usage(prompt_total, completion)})
        yield b"data: [DONE]\n\n"
    finally:
        for _, _, g in jobs:
            g.cancelled.set()

