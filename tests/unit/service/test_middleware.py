"""The guard middleware around a slow stand-in app: 413 before and while reading, 429 at once."""

import asyncio

import httpx
from starlette.responses import JSONResponse

from graft.service.middleware import RequestGuard


async def slow_app(scope, receive, send):
    """Reads the whole body, waits, answers 200."""
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(0.3)
    await JSONResponse({"ok": True})(scope, receive, send)


def guarded(**limits):
    app = RequestGuard(slow_app, guarded=lambda path: path == "/classify", **limits)
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

    responses = asyncio.run(run())
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["expected"] == "at most 2 requests in flight"


def test_other_paths_pass_untouched():
    async def run():
        async with guarded(max_request_bytes=10, max_concurrency=1) as client:
            return await client.post("/other", content=b"x" * 50)

    assert asyncio.run(run()).status_code == 200
