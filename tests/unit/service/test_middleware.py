"""The guard middleware around a slow stand-in app: 413 before and while reading, 429, error shape."""

import asyncio
import json

import httpx
import pytest
from starlette.responses import JSONResponse

from graft.service.middleware import RequestGuard, normalise


async def slow_app(scope, receive, send):
    """Reads the whole body, waits, answers 200; or mimics BentoML's error shapes on /fail."""
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/fail":
        await JSONResponse([{"error": "expected an int, got 'x'"}], status_code=400)(scope, receive, send)
        return
    await asyncio.sleep(0.3)
    await JSONResponse({"ok": True})(scope, receive, send)


def guarded(**limits):
    app = RequestGuard(slow_app, paths=frozenset({"/classify", "/fail"}), **limits)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_declared_oversize_body_gets_413_without_running_the_app():
    async def run():
        async with guarded(max_request_bytes=100, max_concurrency=4) as client:
            return await client.post("/classify", content=b"x" * 101)

    response = asyncio.run(run())
    assert response.status_code == 413
    assert response.json() == {
        "error": "expected a request body of at most 100 bytes, got 101 bytes",
        "expected": "a request body of at most 100 bytes",
        "got": "101 bytes",
    }


def test_streamed_oversize_body_gets_413():
    async def chunks():
        for _ in range(10):
            yield b"x" * 50

    async def run():
        async with guarded(max_request_bytes=100, max_concurrency=4) as client:
            return await client.post("/classify", content=chunks())  # no Content-Length

    response = asyncio.run(run())
    assert response.status_code == 413
    assert response.json()["expected"] == "a request body of at most 100 bytes"


def test_requests_beyond_the_concurrency_limit_get_429_at_once():
    async def run():
        async with guarded(max_request_bytes=1000, max_concurrency=2) as client:
            return await asyncio.gather(*(client.post("/classify", content=b"{}") for _ in range(4)))

    statuses = sorted(r.status_code for r in asyncio.run(run()))
    assert statuses == [200, 200, 429, 429]


def test_other_paths_pass_untouched_and_errors_are_reshaped():
    async def run():
        async with guarded(max_request_bytes=10, max_concurrency=1) as client:
            return await client.post("/other", content=b"x" * 50), await client.post("/fail", content=b"")

    other, failed = asyncio.run(run())
    assert other.status_code == 200
    assert failed.status_code == 400
    assert failed.json() == {"error": "expected an int, got 'x'", "expected": "an int", "got": "'x'"}


@pytest.mark.parametrize("status, payload, error", [
    (400, {"error": "1 validation error for Input", "detail": [{"type": "missing", "loc": ["images"], "msg": "Field required"}]},
     "expected a form field named 'images', got none"),
    (400, {"error": "1 validation error", "detail": [{"type": "value_error", "loc": ["top_k"], "msg": "Value error, expected a positive integer, got 0"}]},
     "top_k: expected a positive integer, got 0"),
    (503, {"error": "An unexpected error has occurred, please check the server log."}, "server overloaded"),
    (400, {"error": "x", "expected": None, "got": None}, "x"),
])
def test_normalise(status, payload, error):
    body = normalise(status, payload)
    assert set(body) == {"error", "expected", "got"}
    assert body["error"].startswith(error)


def test_normalise_output_is_json():
    json.dumps(normalise(400, ["odd"]))
