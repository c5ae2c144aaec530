"""ASGI middleware: for the public API routes, method (405), body limit (413), in-flight limit (429)
and error shape; for the whole app, a JSON 404 for unknown paths.

BentoML 1.4 has no request-size limit, answers its own parsing errors in two other shapes (a list
`[{"error": ...}]`, or pydantic's `{"error": "N validation errors", "detail": [...]}`), and turns a
client disconnect mid-body into a 500. This middleware sits in front of the API routes and rewrites
those responses into `service.errors.error_body`'s shape, so clients see one format.
"""

from __future__ import annotations

import json
import logging

from starlette.responses import JSONResponse

from graft.service.errors import error_body

log = logging.getLogger(__name__)

_OVERLOADED = "server overloaded: expected capacity for this request, got none free; retry shortly"


def _pydantic_message(problem: dict) -> str:
    where = ".".join(str(part) for part in problem.get("loc", ())) or "body"
    if problem.get("type") == "missing":
        return f"expected a form field named {where!r}, got none"
    message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {message}"


def normalise(status: int, payload: object) -> dict:
    """Any error body BentoML produces, rewritten as `{"error", "expected", "got"}`."""
    if isinstance(payload, dict) and {"error", "expected", "got"} <= payload.keys():
        return payload
    if status == 503:
        return error_body(_OVERLOADED)
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        return error_body("; ".join(_pydantic_message(p) for p in payload["detail"] if isinstance(p, dict)))
    if isinstance(payload, list):
        return error_body("; ".join(str(p.get("error", p)) for p in payload if isinstance(p, dict)))
    if isinstance(payload, dict) and "error" in payload:
        return error_body(str(payload["error"]))
    return error_body(str(payload))


class RequestGuard:
    """Guards `paths`: refuses methods other than POST with 405, bodies over `max_request_bytes`
    with 413 (by Content-Length before reading, or while streaming), more than `max_concurrency`
    requests in flight with an immediate 429, and rewrites every error response into the service's
    one error shape."""

    def __init__(self, app, *, paths: frozenset[str], max_request_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.paths = paths
        self.max_request_bytes = max_request_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "OPTIONS"):  # OPTIONS: CORS preflight, when configured
            # BentoML would answer a plain-text 405 that no JSON client can parse.
            await self._reply(scope, receive, send, 405,
                              f"expected POST with a multipart form to {scope['path']}, got {scope['method']}",
                              headers={"Allow": "POST"})
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_request_bytes):
            got = f"{int(length)} bytes" if length.isdigit() else f"Content-Length {length.decode(errors='replace')!r}"
            await self._reply(scope, receive, send, 413 if length.isdigit() else 400,
                              f"expected a request body of at most {self.max_request_bytes} bytes, got {got}")
            return
        if self.in_flight >= self.max_concurrency:
            await self._reply(scope, receive, send, 429, _OVERLOADED, headers={"Retry-After": "1"})
            return
        self.in_flight += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _guarded(self, scope, receive, send) -> None:
        received = 0
        too_large = False
        held_start: dict | None = None
        held_body: list[bytes] = []

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    # Makes Starlette stop reading (ClientDisconnect); the response is replaced below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def rewriting_send(message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if too_large or (message["status"] >= 400 and is_json):
                    held_start = message
                    return
            elif message["type"] == "http.response.body" and held_start is not None:
                held_body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                if too_large:
                    status, body = 413, error_body(
                        f"expected a request body of at most {self.max_request_bytes} bytes, got more"
                    )
                else:
                    status = held_start["status"]
                    try:
                        payload = json.loads(b"".join(held_body) or b"null")
                    except ValueError:
                        payload = b"".join(held_body).decode(errors="replace")
                    body = normalise(status, payload)
                await JSONResponse(body, status_code=status)(scope, receive, send)
                return
            await send(message)

        await self.app(scope, counting_receive, rewriting_send)

    @staticmethod
    async def _reply(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
        await JSONResponse(error_body(message), status_code=status, headers=headers)(scope, receive, send)


class JsonNotFound:
    """Answers a request for a route that does not exist with a JSON 404 naming the routes.

    NOTE: BentoML's router answers unknown paths itself, in plain text, before any app mounted on
    the service sees them, so this sits around the whole application instead.
    """

    def __init__(self, app, *, routes: str) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def rewriting_send(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                # Status first: every response passes here, and only 404s need their headers read.
                replaced = message["status"] == 404 and dict(message.get("headers", ())).get(
                    b"content-type", b"").startswith(b"text/plain")
                if replaced:
                    body = error_body(f"expected one of {self.routes}, got {scope['method']} {scope['path']}")
                    await JSONResponse(body, status_code=404)(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        await self.app(scope, receive, rewriting_send)
