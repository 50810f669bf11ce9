"""The service's front door, as one ASGI middleware: auth, body size, admission (load shedding), headers.

Order of checks for a request to the API (``/v1/...`` and ``/thumbs/...``), cheapest first and all
before the body is read:

1. bearer token (when configured; ``/v1/health`` and the page's static files stay public) → 401
2. ``Content-Length`` above the limit → 413; the body is also counted while it streams (chunked
   uploads), and the request fails with 413 at the first byte past the limit
3. admission: at most ``capacity`` requests of a class are in the building (computing or queued);
   one more gets **429 with Retry-After at once**, so an overload costs almost nothing and the
   memory held by requests stays bounded. Admitted requests then wait for one of
   ``max_concurrency`` compute slots (:class:`Gate`), up to ``queue_timeout_s`` (then 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncIterator, Awaitable, Callable

from starlette.exceptions import HTTPException

from clipforge.serve.security import token_matches

log = logging.getLogger("clipforge.serve")
Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


class Overloaded(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Gate:
    """``capacity`` requests admitted at once, ``concurrency`` of them computing; the rest wait in line."""

    def __init__(self, concurrency: int, queue: int, timeout_s: float):
        self.concurrency, self.capacity, self.timeout_s = concurrency, concurrency + queue, timeout_s
        self.admitted = 0
        self._slots: asyncio.Semaphore | None = None  # created in the server's event loop

    def try_admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def compute_slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise Overloaded(503, f"overloaded: waited {self.timeout_s:g} s for a free worker; retry later") from None
        try:
            yield
        finally:
            self._slots.release()


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` past the limit. An HTTPException, so that FastAPI's body parsing passes
    it on as a 413 instead of wrapping it into a generic 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class Guard:
    """ASGI middleware; ``gates`` maps a path prefix to its :class:`Gate` (first match wins)."""

    def __init__(self, app, *, token: str | None, max_body_bytes: int, gates: dict[str, Gate],
                 public_paths: tuple[str, ...] = ("/v1/health",)):
        self.app, self.token, self.max_body = app, token, max_body_bytes
        self.gates, self.public_paths = gates, public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        send = _with_headers(send)
        guarded = path.startswith(("/v1/", "/thumbs/")) and path not in self.public_paths
        if guarded and self.token is not None and not token_matches(_header(scope, b"authorization"), self.token):
            await _reply(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                         [(b"www-authenticate", b'Bearer realm="clipforge"')])
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request body larger than {self.max_body} bytes" if length.isdigit()
                         else "invalid Content-Length header")
            return
        gate = next((g for prefix, g in self.gates.items() if path.startswith(prefix)), None) if guarded else None
        if gate is not None and not gate.try_admit():
            await _reply(send, 429, f"overloaded: {gate.capacity} requests are already in progress; retry later",
                         [(b"retry-after", b"1")])
            return
        try:
            await self._call_counted(scope, receive, send)
        finally:
            if gate is not None:
                gate.leave()

    async def _call_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, f"request body larger than {self.max_body} bytes")
        except Exception:  # a bug, not bad input: log it, answer a bare 500, keep the connection usable
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _reply(send, 500, "internal error")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": list(message.get("headers", []))
                       + [(k, v) for k, v in SECURITY_HEADERS if k not in names]}
        await send(message)

    return wrapped


async def _reply(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["BodyTooLarge", "Gate", "Guard", "Overloaded"]
