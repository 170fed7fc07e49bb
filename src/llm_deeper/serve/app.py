"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions,
/v1/completions, /health.

The request path: validate (pydantic, protocol.py) -> the prompt's ids, sampling parameters,
grammar and adapter (prompts.py) -> the engine generates token by token -> stop strings, then
content / reasoning_content / tool_calls (chat/reply.py) -> JSON, or server-sent events when
`stream` is set (streaming.py).

Every error is an OpenAI error object with a 4xx status (401 bad key, 404 unknown model,
408 body too slow, 413 body too large, 400 anything else about the request); the key, the body
limit and idle connections are limits.py's.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from .engine import Engine
from .limits import Guard
from .prompts import chat_jobs, check_text, completion_jobs
from .protocol import APIError, ChatRequest, CompletionRequest, error_body, now
from .streaming import chat_answer, chat_stream, completion_answer, completion_stream

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_SEQUENCES = 16  # prompts x n of one request
SSE = "text/event-stream"


class _ErrorResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error that quotes a client's broken
    text (a lone surrogate) still encodes."""

    def render(self, content) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True).encode()


def create_app(engine: Engine, served_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_sequences: int = MAX_SEQUENCES,
               body_timeout: float = 30.0):
    app = FastAPI(title="llm-deeper", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       body_timeout=body_timeout)

    def err(status, message, param=None, type_="invalid_request_error", code=None):
        return _ErrorResponse(error_body(message, type_, param, code), status_code=status)

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

    @app.get("/health")
    async def health():
        out = {"status": "ok", "running": engine.running}
        if hasattr(engine, "kv_blocks_used"):  # the native engine's paged cache
            out["kv_blocks_used"] = engine.kv_blocks_used
        if hasattr(engine, "prefix_cache_hit_tokens"):  # prompt tokens, and those reused
            out["prompt_tokens"] = engine.prompt_tokens
            out["prefix_cache_hit_tokens"] = engine.prefix_cache_hit_tokens
        return out

    @app.get("/v1/models")
    async def list_models():
        created = now()  # names only: no file system path leaves the server
        data = [{"id": served_name, "object": "model", "created": created,
                 "owned_by": "llm-deeper", "root": served_name, "parent": None,
                 "max_model_len": engine.context_length}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "llm-deeper",
                  "root": name, "parent": served_name, "max_model_len": engine.context_length}
                 for name in engine.adapters]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        check_text(req)
        ids, gens = chat_jobs(engine, req, served_name, max_sequences)
        if req.stream:
            return StreamingResponse(chat_stream(engine, req, ids, gens), media_type=SSE)
        return await chat_answer(engine, req, ids, gens)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check_text(req)
        jobs = completion_jobs(engine, req, served_name, max_sequences)
        if req.stream:
            return StreamingResponse(completion_stream(engine, req, jobs), media_type=SSE)
        return await completion_answer(engine, req, jobs)

    return app
