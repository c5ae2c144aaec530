"""Client errors: each class carries its HTTP status; every error has one JSON body shape.

The body is `{"error": MESSAGE, "expected": ..., "got": ...}`. `expected` and `got` are fields
the raiser fills, never parsed back out of the message; the message is built from them when the
raiser gives none. One handler (`graft.service.routes`) turns any `ServiceError` into a response.
"""

from __future__ import annotations

import logging

from graft.artifact.errors import GraftError
from graft.service.responses import JSONResponse

log = logging.getLogger(__name__)


class ServiceError(GraftError):
    """A request the service refuses. Subclasses set `status`; instances may add headers."""

    status = 400

    def __init__(
        self, message: str = "", *, expected: str | None = None, got: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not message:
            message = f"expected {expected}, got {got}"
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.got = got
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.message, "expected": self.expected, "got": self.got}

    def response(self) -> JSONResponse:
        """The error as the HTTP response every route and the guard send."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def log(self, method: str, path: str) -> None:
        """One log line per client mistake; overload (429, 503) is counted in /metrics instead."""
        if self.status not in (429, 503):
            log.info("%d %s %s: %s", self.status, method, path, self.message)


class BadRequest(ServiceError, ValueError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError, LookupError):
    status = 404


class MethodNotAllowed(ServiceError):
    status = 405


class Conflict(ServiceError):
    status = 409


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class TooManyRequests(ServiceError):
    """The queue is full: refused at once, before any work, with `Retry-After`."""

    status = 429


class Unavailable(ServiceError):
    """Not ready, draining, or an item could not meet its deadline."""

    status = 503


class NotConfigured(ServiceError):
    """A feature this server's settings leave off (heads without GRAFT_HEADS_DIR): no client can fix it."""

    status = 501
