"""Authentication, per-key rate limits and request size limits of the service."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shangpin.storage.keys import ApiKey

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANONYMOUS = ApiKey(id=0, prefix="anonymous", scope="admin", name="auth off", created_at=datetime.now(UTC))
"""The caller when SHANGPIN_AUTH=off: every scope, named 'anonymous' in the audit trail."""


class KeyCache:
    """Verified tokens for `ttl` seconds, so a request costs no database round trip; a revoked key stops
    working within `ttl`."""

    def __init__(self, verify: Callable[[str], ApiKey | None], ttl: float = 30.0) -> None:
        self._verify, self.ttl = verify, ttl
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """(True, the key or None) when a fresh answer for `token` is cached; (False, None) when it must be
        verified (`get`)."""
        with self._lock:
            hit = self._cache.get(_digest(token))
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def get(self, token: str) -> ApiKey | None:
        """The key of `token`, verified against the database at most once per `ttl`."""
        found, key = self.cached(token)
        if found:
            return key
        now = time.monotonic()
        key = self._verify(token)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[_digest(token)] = (now + self.ttl, key)
        return key


def _digest(token: str) -> str:
    """Tokens are cached under their hash, so the cache holds no usable secret."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, bursts up to `burst` (0 rate: no limit)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(2 * rate, 1.0)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


class BodyLimit:
    """ASGI middleware answering 413 to a request body over `max_bytes` (declared or actually sent)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {
                "detail": f"request body larger than the limit of {self.max_bytes} bytes; send fewer or smaller "
                "products per request (the server's --max-body sets the limit)."
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
