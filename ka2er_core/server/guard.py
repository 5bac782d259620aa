"""The server's front door (ASGI middleware): request rate, bearer token and body size are checked
before any route reads a byte of the body, so a refused request does nothing else."""

from __future__ import annotations

import hmac
import json
import time
from typing import Callable, Optional

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """Raised by the receive channel once a body (sent without or beyond its Content-Length) passes
    the limit; the app renders it as 413 wherever the body is being read."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class TokenBuckets:
    """Per-client request rate: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time)

    def take(self, client: str) -> float:
        """0 when the request may go, else the seconds to wait."""
        now = self.clock()
        tokens, then = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > 10000:  # forget clients that have been quiet long enough to be full
            self._buckets = {c: (t, s) for c, (t, s) in self._buckets.items()
                             if t + (now - s) * self.rate < self.burst}
        return 0.0


class Guard:
    """ASGI middleware. ``token`` None disables the token check (``--insecure-local`` on loopback);
    ``open_paths`` need no token; ``body_limit(method, path)`` gives the largest body allowed."""

    def __init__(self, app, token: Optional[str], buckets: TokenBuckets,
                 body_limit: Callable[[str, str], int], open_paths: frozenset = frozenset({"/health"})):
        self.app = app
        self.token = None if token is None else f"Bearer {token}".encode()
        self.buckets, self.body_limit, self.open_paths = buckets, body_limit, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.buckets.take(client)
        if wait:
            return await reply(send, 429, "too many requests; slow down",
                               [(b"retry-after", str(max(1, round(wait))).encode())])
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                return await reply(send, 401, "missing or wrong bearer token",
                                   [(b"www-authenticate", b"Bearer")])
        limit = self.body_limit(scope["method"], scope["path"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await reply(send, 413, f"request body larger than {limit} bytes")
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted_receive, send)


async def reply(send, status: int, detail: str, headers: Optional[list] = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
