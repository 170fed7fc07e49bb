"""What stands between the network and the app: the API key, the size and pace of request
bodies, and idle connections.

* `Guard` (ASGI middleware, outermost): every path but /health needs the key when one is set
  (compared in constant time, `hmac.compare_digest`); a request body is read here, whatever its
  framing (Content-Length or chunked), and refused with 413 once it passes the limit (the rest
  is read and dropped for up to 2 s, so the client sees the answer), or 408 when it trickles in
  slower than the deadline; the app then gets the buffered body.
* `TimedH11Protocol`: uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.
  uvicorn times out a keep-alive connection only after a response; a connection that opens and
  sends nothing, or sends its headers a byte at a time, would stay open for ever.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import error_body


async def send_error(send, status: int, message: str, type_: str = "invalid_request_error",
                     code: str | None = None) -> None:
    """An OpenAI-style error answer, written straight to the ASGI `send`."""
    body = json.dumps(error_body(message, type_, None, code)).encode()  # ASCII: always encodes
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 body_timeout: float = 30.0):
        self.app, self.max_body, self.body_timeout = app, max_body_bytes, body_timeout
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] != "/health":
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.key):
                return await send_error(send, 401, "invalid or missing API key "
                                        "(Authorization: Bearer ...).", "authentication_error",
                                        "invalid_api_key")
        size = headers.get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body):
            return await send_error(send, 413, f"request body larger than {self.max_body} bytes.")
        body, more = bytearray(), scope["method"] in ("POST", "PUT", "PATCH")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await send_error(send, 408, f"the request body did not arrive within "
                                        f"{self.body_timeout:.0f} s.")
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                body = bytearray()  # the memory goes now; what still comes is read and dropped
                await self._drain(receive, more)
                return await send_error(send, 413,
                                        f"request body larger than {self.max_body} bytes.")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)

    async def _drain(self, receive, more: bool, seconds: float = 2.0) -> None:
        """Read and drop the rest of a refused body for a moment, so a client still sending it
        gets the 413 instead of a reset connection; a body that goes on longer is cut off."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while more and loop.time() < end:
            try:
                message = await asyncio.wait_for(receive(), end - loop.time())
            except TimeoutError:
                return
            more = message.get("more_body", False) and message["type"] == "http.request"


class TimedH11Protocol(H11Protocol):
    """A request's headers must arrive within `header_timeout` seconds of the connection opening
    or of the previous response, else the connection is closed."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._armed_cycle:  # a request's headers are in: it is served
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
