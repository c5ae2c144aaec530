"""graft's batcher on its own, with a fake session: greedy batches, bounds, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from graft.service.batcher import Batcher
from graft.service.errors import TooManyRequests, Unavailable


class FakeSession:
    """Records each batch; doubles payloads; can be held mid-batch; fails batches holding 'bad'."""

    def __init__(self, seconds_per_item: float = 0.0) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()
        self.seconds_per_item = seconds_per_item

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.running.set()
        self.release.wait(10)
        time.sleep(self.seconds_per_item * len(payloads))
        if "bad" in payloads:
            raise RuntimeError("the session failed")
        return [payload * 2 for payload in payloads]


def far() -> float:
    return time.monotonic() + 60


async def wait_running(session: FakeSession) -> None:
    await asyncio.get_running_loop().run_in_executor(None, session.running.wait, 10)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_batch_starts_at_once_and_takes_everything_queued_meanwhile():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=16, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([1], deadline=far()))
        await wait_running(session)  # the lone item did not wait for partners
        # Three requests with different numbers of items arrive while the session is busy.
        others = [asyncio.ensure_future(batcher.submit(items, deadline=far())) for items in ([2, 3], [4], [5, 6, 7])]
        await asyncio.sleep(0.05)
        session.release.set()
        results = await asyncio.gather(first, *others)
        batcher.close()
        return session.batches, results

    batches, results = run(scenario())
    assert batches == [[1], [2, 3, 4, 5, 6, 7]]
    assert results == [[2], [4, 6], [8], [10, 12, 14]]  # each request its own results, in order


def test_batches_never_exceed_max_batch():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=4, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([0], deadline=far()))
        await wait_running(session)
        rest = asyncio.ensure_future(batcher.submit(list(range(1, 11)), deadline=far()))
        await asyncio.sleep(0.05)
        session.release.set()
        await asyncio.gather(first, rest)
        batcher.close()
        return [len(batch) for batch in session.batches]

    assert run(scenario()) == [1, 4, 4, 2]


def test_a_full_queue_refuses_at_once_with_retry_after():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=2, max_queue=3)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([0], deadline=far()))
        await wait_running(session)
        queued = asyncio.ensure_future(batcher.submit([1, 2], deadline=far()))
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(TooManyRequests) as refused:
            await batcher.submit([3, 4], deadline=far())
        refused_in = time.monotonic() - started
        session.release.set()
        await asyncio.gather(first, queued)
        batcher.close()
        return refused.value, refused_in, session.batches

    error, refused_in, batches = run(scenario())
    assert error.status == 429 and error.headers["Retry-After"] == "1"
    assert "at most 3 images waiting" in error.expected
    assert refused_in < 0.5  # it did not wait for the running batch
    assert [3, 4] not in batches and 3 not in sum(batches, [])


def test_items_that_cannot_meet_their_deadline_are_answered_503_without_running():
    async def scenario():
        session = FakeSession(seconds_per_item=0.05)
        batcher = Batcher("m", session, max_batch=8, max_queue=64)
        await batcher.submit([1, 2], deadline=far())  # learns about 50 ms per item
        with pytest.raises(Unavailable) as late:
            await batcher.submit([3], deadline=time.monotonic() + 0.01)
        on_time = await batcher.submit([4], deadline=time.monotonic() + 5)
        batcher.close()
        return late.value, on_time, session.batches

    error, on_time, batches = run(scenario())
    assert error.status == 503 and "latency budget" in error.expected
    assert batches == [[1, 2], [4]] and on_time == [8]


def test_a_request_that_went_away_is_dropped_before_it_runs():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=8, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([1], deadline=far()))
        await wait_running(session)
        gone = asyncio.ensure_future(batcher.submit([2, 3], deadline=far()))
        staying = asyncio.ensure_future(batcher.submit([4], deadline=far()))
        await asyncio.sleep(0)
        gone.cancel()  # what the route does when its client disconnects
        session.release.set()
        results = await asyncio.gather(first, staying)
        batcher.close()
        return session.batches, results

    batches, results = run(scenario())
    assert batches == [[1], [4]] and results == [[2], [8]]


def test_an_exception_fails_only_its_batch_and_the_batcher_goes_on():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=8, max_queue=64)
        session.hold()
        blocker = asyncio.ensure_future(batcher.submit([1], deadline=far()))
        await wait_running(session)
        doomed = [asyncio.ensure_future(batcher.submit(items, deadline=far())) for items in (["bad"], [2])]
        await asyncio.sleep(0)
        session.release.set()
        outcomes = await asyncio.gather(blocker, *doomed, return_exceptions=True)
        after = await batcher.submit([5], deadline=far())
        batcher.close()
        return outcomes, after

    (blocker, bad, neighbour), after = run(scenario())
    assert blocker == [2]
    assert isinstance(bad, RuntimeError) and isinstance(neighbour, RuntimeError)  # same batch
    assert after == [10]


def test_the_event_loop_runs_while_a_batch_does():
    async def scenario():
        session = FakeSession()
        batcher = Batcher("m", session, max_batch=8, max_queue=64)
        session.hold()
        pending = asyncio.ensure_future(batcher.submit([1], deadline=far()))
        await wait_running(session)
        started = time.monotonic()
        await asyncio.sleep(0.01)  # would block until release if the session ran on the loop
        ticked = time.monotonic() - started
        session.release.set()
        await pending
        batcher.close()
        return ticked

    assert run(scenario()) < 1.0
