"""Client errors: one exception type per HTTP status, one JSON body shape for every error.

Every error the service returns, whoever raised it (our endpoints, BentoML's request parsing, the
guard middleware), has the body `{"error": MESSAGE, "expected": ..., "got": ...}`; `expected` and
`got` are null when the message has no such parts.
"""

from __future__ import annotations

import re

from graft.artifact.errors import GraftError
from graft.artifact.image import ImageDecodeError
from graft.service.models import ModelNotFound

_EXPECTED_GOT = re.compile(r"expected (?P<expected>.+?), got (?P<got>.+)$", re.DOTALL)


class ServiceError(GraftError):
    """A request the service refuses; `status` is its HTTP status."""

    status = 400


class BadRequest(ServiceError, ValueError):
    status = 400


class UnknownModel(ServiceError, LookupError):
    status = 404


class Overloaded(ServiceError):
    status = 503


def error_body(message: str) -> dict:
    """The JSON error body; "expected X, got Y" in the message fills `expected` and `got`."""
    match = _EXPECTED_GOT.search(message)
    return {
        "error": message,
        "expected": match["expected"] if match else None,
        "got": match["got"] if match else None,
    }


def status_of(error: Exception) -> int | None:
    """The HTTP status for a client error, or None if `error` is not one (a server bug)."""
    if isinstance(error, ServiceError):
        return error.status
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, ImageDecodeError):
        return 400
    return None
