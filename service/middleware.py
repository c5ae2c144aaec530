"""The guard in front of the inference routes: body size (413) and requests in flight (429), both
decided before the body is read, so refusing is the cheap path under overload.

It wraps the whole BentoML app (`add_asgi_middleware`), ahead of routing, so a refusal costs no
route matching and no exception-handling layers. A connection that comes back before the
`Retry-After` it was given is paced: its request waits out the rest of that time (a timer, no CPU)
and is then admitted if there is room, else refused. Clients that retry at once on a 429 would
otherwise make refusing the event loop's main work and starve the requests it admitted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from graft.service.errors import PayloadTooLarge, ServiceError, TooManyRequests

RETRY_AFTER_S = 1
"""What a 429's `Retry-After` tells the client to wait, in seconds."""
PACED_CONNECTIONS = 10_000
"""Most connections remembered as refused; older entries are forgotten past this many."""


class RequestGuard:
    """ASGI middleware for the paths `guarded` accepts: refuses a declared body over `max_request_bytes` (413), stops
    reading a streamed one past it (413), and refuses a request beyond `max_concurrency` in flight
    in this worker (429 with `Retry-After`), pacing connections that retry sooner than told."""

    def __init__(self, app, *, guarded: Callable[[str], bool], max_request_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.guarded = guarded
        self.max_request_bytes = max_request_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.refused_at: dict[tuple, float] = {}  # client (host, port) -> when it was last refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            await self._refuse(scope, receive, send, self._too_large(f"{int(length)} bytes"))
            return
        if self.in_flight >= self.max_concurrency:
            await self._pace(scope.get("client"))
        if self.in_flight >= self.max_concurrency:
            self._remember(scope.get("client"))
            await self._refuse(scope, receive, send, TooManyRequests(
                expected=f"at most {self.max_concurrency} requests in flight", got="more; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ))
            return
        self.in_flight += 1
        try:
            # Yield once before the admitted request's parsing: refusals of requests that arrived in
            # the same burst, already queued on the event loop, are answered first, not after it.
            await asyncio.sleep(0)
            await self._limited(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _pace(self, client: tuple | None) -> None:
        """Hold a connection refused less than `RETRY_AFTER_S` ago until that time is up."""
        refused = self.refused_at.pop(client, None) if client else None
        if refused is not None:
            wait = refused + RETRY_AFTER_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def _remember(self, client: tuple | None) -> None:
        if not client:
            return
        if len(self.refused_at) >= PACED_CONNECTIONS:
            now = time.monotonic()
            self.refused_at = {key: at for key, at in self.refused_at.items() if now - at < RETRY_AFTER_S}
        self.refused_at[client] = time.monotonic()

    def _too_large(self, got: str) -> PayloadTooLarge:
        return PayloadTooLarge(expected=f"a request body of at most {self.max_request_bytes} bytes", got=got)

    async def _limited(self, scope, receive, send) -> None:
        received = 0
        too_large = False
        started = False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    too_large = True
                    # Makes Starlette stop reading (ClientDisconnect); the 413 is sent below.
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to a body cut short; the 413 replaces it
            started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if too_large and not started:
            await self._refuse(scope, receive, send, self._too_large("more"))

    @staticmethod
    async def _refuse(scope, receive, send, error: ServiceError) -> None:
        error.log(scope["method"], scope["path"])
        await error.response()(scope, receive, send)
