"""graft's batcher on its own, with a fake session and a fake clock: greedy batches, bounds, deadlines,
cancellation. Nothing waits for time to pass: tests wait on events or poll the queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from graft.service.batcher import Batcher
from graft.service.errors import TooManyRequests, Unavailable
from tests.unit.service.conftest import until


class FakeClock:
    """Seconds that pass only when the fake session says a batch took them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """Records each batch and the thread it ran on; doubles payloads; can be held mid-batch; fails
    batches holding 'bad'; each item takes `seconds_per_item` on the clock."""

    def __init__(self, clock: FakeClock, seconds_per_item: float = 0.0) -> None:
        self.batches: list[list] = []
        self.threads: set[int] = set()
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()
        self.clock = clock
        self.seconds_per_item = seconds_per_item

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.threads.add(threading.get_ident())
        self.running.set()
        self.release.wait(10)
        self.clock.now += self.seconds_per_item * len(payloads)
        if "bad" in payloads:
            raise RuntimeError("the session failed")
        return [payload * 2 for payload in payloads]


def batcher_on(seconds_per_item: float = 0.0, **limits) -> tuple[Batcher, FakeSession, FakeClock]:
    clock = FakeClock()
    session = FakeSession(clock, seconds_per_item)
    return Batcher("m", session, clock=clock, **limits), session, clock


def far(clock: FakeClock) -> float:
    return clock() + 60


async def wait_running(session: FakeSession) -> None:
    await asyncio.get_running_loop().run_in_executor(None, session.running.wait, 10)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_batch_starts_at_once_and_takes_everything_queued_meanwhile():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=16, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([1], deadline=far(clock)))
        await wait_running(session)  # the lone item did not wait for partners
        # Three requests with different numbers of items arrive while the session is busy.
        others = [asyncio.ensure_future(batcher.submit(items, deadline=far(clock))) for items in ([2, 3], [4], [5, 6, 7])]
        await until(lambda: batcher.depth == 6)
        session.release.set()
        results = await asyncio.gather(first, *others)
        batcher.close()
        return session.batches, results

    batches, results = run(scenario())
    assert batches == [[1], [2, 3, 4, 5, 6, 7]]
    assert results == [[2], [4, 6], [8], [10, 12, 14]]  # each request its own results, in order


def test_batches_never_exceed_max_batch():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=4, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([0], deadline=far(clock)))
        await wait_running(session)
        rest = asyncio.ensure_future(batcher.submit(list(range(1, 11)), deadline=far(clock)))
        await until(lambda: batcher.depth == 10)
        session.release.set()
        await asyncio.gather(first, rest)
        batcher.close()
        return [len(batch) for batch in session.batches]

    assert run(scenario()) == [1, 4, 4, 2]


def test_a_full_queue_refuses_at_once_with_retry_after():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=2, max_queue=3)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([0], deadline=far(clock)))
        await wait_running(session)
        queued = asyncio.ensure_future(batcher.submit([1, 2], deadline=far(clock)))
        await until(lambda: batcher.depth == 2)
        # Refused while the session is still held: the refusal cannot have waited for that batch.
        with pytest.raises(TooManyRequests) as refused:
            await batcher.submit([3, 4], deadline=far(clock))
        assert not session.release.is_set()
        session.release.set()
        await asyncio.gather(first, queued)
        batcher.close()
        return refused.value, session.batches

    error, batches = run(scenario())
    assert error.status == 429 and error.headers["Retry-After"] == "1"
    assert "at most 3 images waiting" in error.expected
    assert [3, 4] not in batches and 3 not in sum(batches, [])


def test_items_that_cannot_meet_their_deadline_are_answered_503_without_running():
    async def scenario():
        batcher, session, clock = batcher_on(seconds_per_item=0.05, max_batch=8, max_queue=64)
        await batcher.submit([1, 2], deadline=far(clock))  # learns 50 ms per item
        with pytest.raises(Unavailable) as late:
            await batcher.submit([3], deadline=clock() + 0.04)
        on_time = await batcher.submit([4], deadline=clock() + 0.06)
        batcher.close()
        return late.value, on_time, session.batches

    error, on_time, batches = run(scenario())
    assert error.status == 503 and "latency budget" in error.expected
    assert batches == [[1, 2], [4]] and on_time == [8]


def test_a_request_that_went_away_is_dropped_before_it_runs():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=8, max_queue=64)
        session.hold()
        first = asyncio.ensure_future(batcher.submit([1], deadline=far(clock)))
        await wait_running(session)
        gone = asyncio.ensure_future(batcher.submit([2, 3], deadline=far(clock)))
        staying = asyncio.ensure_future(batcher.submit([4], deadline=far(clock)))
        await until(lambda: batcher.depth == 3)
        gone.cancel()  # what the route does when its client disconnects
        session.release.set()
        results = await asyncio.gather(first, staying)
        batcher.close()
        return session.batches, results

    batches, results = run(scenario())
    assert batches == [[1], [4]] and results == [[2], [8]]


def test_an_exception_fails_only_its_batch_and_the_batcher_goes_on():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=8, max_queue=64)
        session.hold()
        blocker = asyncio.ensure_future(batcher.submit([1], deadline=far(clock)))
        await wait_running(session)
        doomed = [asyncio.ensure_future(batcher.submit(items, deadline=far(clock))) for items in (["bad"], [2])]
        await until(lambda: batcher.depth == 2)
        session.release.set()
        outcomes = await asyncio.gather(blocker, *doomed, return_exceptions=True)
        after = await batcher.submit([5], deadline=far(clock))
        batcher.close()
        return outcomes, after

    (blocker, bad, neighbour), after = run(scenario())
    assert blocker == [2]
    assert isinstance(bad, RuntimeError) and isinstance(neighbour, RuntimeError)  # same batch
    assert after == [10]


def test_the_event_loop_runs_while_a_batch_does():
    async def scenario():
        batcher, session, clock = batcher_on(max_batch=8, max_queue=64)
        session.hold()
        pending = asyncio.ensure_future(batcher.submit([1], deadline=far(clock)))
        await wait_running(session)  # the loop got here while the batch is held mid-run
        loop_thread = threading.get_ident()
        session.release.set()
        await pending
        batcher.close()
        return loop_thread, session.threads

    loop_thread, session_threads = run(scenario())
    assert session_threads and loop_thread not in session_threads


async def two_batches_running(first: list, second: list) -> tuple[Batcher, FakeSession, FakeClock, list]:
    """A batcher with two slots, `first` and `second` each running in one, both held mid-batch."""
    batcher, session, clock = batcher_on(max_batch=8, max_queue=64, concurrency=2)
    session.hold()
    running = [asyncio.ensure_future(batcher.submit(first, deadline=far(clock)))]
    await wait_running(session)
    running.append(asyncio.ensure_future(batcher.submit(second, deadline=far(clock))))
    await until(lambda: len(session.batches) == 2)  # the second started while the first is held
    return batcher, session, clock, running


def test_with_two_slots_a_second_batch_runs_beside_the_first_and_the_next_grows_meanwhile():
    async def scenario():
        batcher, session, clock, running = await two_batches_running([1], [2, 3])
        # Both slots busy: these wait, and go together into the next batch.
        later = [asyncio.ensure_future(batcher.submit(items, deadline=far(clock))) for items in ([4], [5, 6])]
        await until(lambda: batcher.depth == 3)
        assert len(session.batches) == 2
        session.release.set()
        results = await asyncio.gather(*running, *later)
        batcher.close()
        return session.batches, session.threads, results

    batches, threads, results = run(scenario())
    assert batches == [[1], [2, 3], [4, 5, 6]]
    assert len(threads) == 2  # each running batch in a thread of its own
    assert results == [[2], [4, 6], [8], [10, 12]]


def test_a_failing_batch_frees_its_slot_and_leaves_the_other_running_batch_alone():
    async def scenario():
        batcher, session, clock, running = await two_batches_running([1], ["bad"])
        session.release.set()
        outcomes = await asyncio.gather(*running, return_exceptions=True)
        after = [await batcher.submit([n], deadline=far(clock)) for n in (5, 6, 7)]  # more than the slots
        batcher.close()
        return outcomes, after

    (good, bad), after = run(scenario())
    assert good == [2] and isinstance(bad, RuntimeError)
    assert after == [[10], [12], [14]]


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="concurrency >= 1"):
        Batcher("m", FakeSession(FakeClock()), max_batch=8, max_queue=8, concurrency=0)
