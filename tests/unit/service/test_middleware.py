"""The guard middleware around a stand-in app that can hold requests: 413 before and while reading,
429 at once."""

import asyncio

import httpx
from starlette.responses import JSONResponse

from graft.service.middleware import RETRY_AFTER_S, RequestGuard
from tests.unit.service.conftest import until


class HeldApp:
    """Reads the whole body, then answers 200 once `release` is set; counts the requests inside."""

    def __init__(self, *, held: bool = False) -> None:
        self.inside = 0
        self.release = asyncio.Event()
        if not held:
            self.release.set()

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        self.inside += 1
        await self.release.wait()
        await JSONResponse({"ok": True})(scope, receive, send)


def guarded(app=None, **limits):
    guard = RequestGuard(app or HeldApp(), guarded=lambda path: path == "/classify", **limits)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test")


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
        app = HeldApp(held=True)
        async with guarded(app, max_request_bytes=1000, max_concurrency=2) as client:
            posts = [asyncio.ensure_future(client.post("/classify", content=b"{}")) for _ in range(4)]
            # Two held inside the app, two already answered: the refusals did not wait for them.
            await until(lambda: app.inside == 2 and sum(post.done() for post in posts) == 2)
            app.release.set()
            return await asyncio.gather(*posts)

    responses = asyncio.run(run())
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["expected"] == "at most 2 requests in flight"


def test_other_paths_pass_untouched():
    async def run():
        async with guarded(max_request_bytes=10, max_concurrency=1) as client:
            return await client.post("/other", content=b"x" * 50)

    assert asyncio.run(run()).status_code == 200


def _client(guard, port):
    """A client whose requests the guard sees as coming from one connection (127.0.0.1:`port`)."""
    transport = httpx.ASGITransport(app=guard, client=("127.0.0.1", port))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _one_slot():
    """A guard admitting one request at a time, around an app that holds what it admits."""
    app = HeldApp(held=True)
    return app, RequestGuard(app, guarded=lambda path: path == "/classify", max_request_bytes=1000, max_concurrency=1)


async def _take_the_slot(app, client):
    held = asyncio.ensure_future(client.post("/classify", content=b"{}"))
    await until(lambda: app.inside == 1)
    return held


def test_a_refusal_reads_no_body_and_says_when_to_retry():
    read = []

    async def body():
        read.append(True)
        yield b"x" * 100

    async def run():
        app, guard = _one_slot()
        async with _client(guard, 1) as holder, _client(guard, 2) as refused:
            held = await _take_the_slot(app, holder)
            response = await refused.post("/classify", content=body())
            app.release.set()
            await held
            return response

    response = asyncio.run(run())
    assert response.status_code == 429 and response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert not read, "the refused request's body was read"


def test_a_connection_retrying_at_once_is_paced_then_admitted():
    """A client refused and back at once (no back-off) waits out its Retry-After inside the guard;
    room freed meanwhile admits it instead of refusing it again."""
    async def run():
        app, guard = _one_slot()
        async with _client(guard, 1) as holder, _client(guard, 2) as storm:
            held = await _take_the_slot(app, holder)
            first = await storm.post("/classify", content=b"{}")
            assert ("127.0.0.1", 2) in guard.refused_at
            retry = asyncio.ensure_future(storm.post("/classify", content=b"{}"))
            await until(lambda: ("127.0.0.1", 2) not in guard.refused_at)  # inside the guard, being paced
            assert not retry.done()
            app.release.set()
            return first, await held, await retry

    first, held, retry = asyncio.run(run())
    assert (first.status_code, held.status_code, retry.status_code) == (429, 200, 200)

