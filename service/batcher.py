"""graft's batcher: one per ONNX Runtime session; greedy batches run in threads of its own.

Requests hand it items (one preprocessed image each) and await one result per item. A batch starts
as soon as one of the session's `concurrency` run slots is free and takes everything queued, up to
`max_batch`: under load the queue fills while the running batches run, so batches grow with load
and nobody waits for partners that may never come (Triton's dynamic batcher with a zero queue
delay; infinity's `BatchHandler`). Each slot is a thread of the batcher's (ONNX Runtime releases
the GIL and its sessions take concurrent runs), so the event loop keeps parsing, decoding and
answering meanwhile. Two slots (`GRAFT_CONCURRENT_BATCHES=2`) are Triton's two model instances
without a second copy of the model: on the CPU, one batch's serial operators and thread hand-offs
leave cores idle that the other batch fills, for the memory of a second batch's activations. A
lone request still runs alone, on every intra-op thread.

Overload is refused, never queued without bound: a full queue answers 429 at once; an item that
cannot finish before its deadline (from the measured time per batch) is answered 503 instead of
run; an item whose request went away (its future cancelled) is dropped before it runs. An
exception in a batch fails that batch's items only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from graft.service.errors import TooManyRequests, Unavailable

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Any]], Sequence[Any]]
"""Runs one batch of item payloads in one of the batcher's threads; returns one result per payload."""


@dataclass(eq=False)
class _Item:
    payload: Any
    future: asyncio.Future
    deadline: float  # on the batcher's clock, by which the result is needed
    enqueued: float


class BatchObserver:
    """What the batcher reports; `graft.service.metrics` records it in Prometheus."""

    def queue_depth(self, depth: int) -> None: ...

    def batch(self, size: int, queued_seconds: Sequence[float], run_seconds: float) -> None: ...

    def shed(self, reason: str, count: int) -> None: ...


class Batcher:
    """Queue items for `run` and execute them in greedy batches, up to `concurrency` at once, each in a
    thread of the batcher's.

    Args:
        name: used for the threads' names and in messages.
        run: the batch function (e.g. stack, ONNX Runtime, split); called in the batcher's threads,
            at most `concurrency` calls at once.
        max_batch: most items in one call of `run`.
        concurrency: most batches running at once.
        max_queue: most items waiting; `submit` refuses more with `TooManyRequests` (429).
        observer: receives queue depth, batch sizes, times and shed counts.
        clock: seconds that only go forward; deadlines and the time per item are measured on it.
            Tests pass a fake one so deadline decisions do not depend on the machine's speed.
    """

    def __init__(
        self, name: str, run: RunBatch, *, max_batch: int, max_queue: int, concurrency: int = 1,
        observer: BatchObserver | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_batch, max_queue, concurrency) < 1:
            raise ValueError(f"expected max_batch, max_queue and concurrency >= 1, got {max_batch}, {max_queue} "
                             f"and {concurrency}")
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.concurrency = concurrency
        self._run = run
        self._clock = clock
        self._observer = observer or BatchObserver()
        self._queue: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # batches running now (the loop keeps only weak references)
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix=f"graft-batch-{name}")
        # Seconds per item of a batch, a moving average over finished batches; 0 until the first
        # batch has run, so nothing is shed on a guess.
        self._per_item = 0.0

    @property
    def depth(self) -> int:
        """Items waiting (not counting the batches running now)."""
        return len(self._queue)

    async def submit(self, payloads: Sequence[Any], *, deadline: float) -> list[Any]:
        """Queue `payloads` (one request's items) and return their results, in order.

        Args:
            payloads: what `run` receives for each item.
            deadline: when results are needed, on the batcher's clock (`time.monotonic()` unless
                given); items that cannot meet it are answered `Unavailable` (503) without running.

        Raises:
            TooManyRequests: the queue cannot take this many more items.
            Unavailable: an item would miss its deadline.
            Exception: whatever `run` raised for this request's batch.
        """
        if len(self._queue) + len(payloads) > self.max_queue:
            self._observer.shed("queue_full", len(payloads))
            raise TooManyRequests(
                expected=f"at most {self.max_queue} images waiting for model {self.name!r}",
                got=f"{len(self._queue)} waiting and {len(payloads)} more; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._start()
        loop = asyncio.get_running_loop()
        now = self._clock()
        items = [_Item(payload, loop.create_future(), deadline, now) for payload in payloads]
        self._queue.extend(items)
        self._observer.queue_depth(len(self._queue))
        self._ready.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            # The request failed or went away: its other items need not run.
            for item in items:
                item.future.cancel()
            raise

    def _start(self) -> None:
        if self._task is None or self._task.done():
            # A fresh event for the loop the task runs on (an event binds to the first loop that waits).
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"graft-batcher-{self.name}")

    def _take(self) -> list[_Item]:
        """Up to `max_batch` live items from the queue's head; shed the ones that cannot make it."""
        batch: list[_Item] = []
        late = 0
        now = self._clock()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # cancelled: its request went away or already failed
                continue
            # The batch starts now (a run slot is free) and grows by this item.
            finish = now + (len(batch) + 1) * self._per_item
            if finish > item.deadline:
                late += 1
                got = (f"an estimated {1000 * (finish - item.enqueued):.0f} ms; retry shortly" if item.deadline > now else
                       "a budget spent before the image was ready (reading and decoding count); allow more time")
                item.future.set_exception(Unavailable(
                    expected=f"capacity to answer within the request's latency budget on model {self.name!r}",
                    got=got, headers={"Retry-After": "1"},
                ))
                continue
            batch.append(item)
        if late:
            self._observer.shed("deadline", late)
        self._observer.queue_depth(len(self._queue))
        return batch

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.concurrency)
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
            await free.acquire()  # items keep queueing while every slot is busy: the next batch grows
            batch = self._take()
            if not batch:
                free.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: free.release())

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = self._clock()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._threads, self._run, [item.payload for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"expected {len(batch)} results from the batch, got {len(results)}")
        except Exception as error:  # fails this batch's requests only; the loop goes on
            log.exception("batch of %d on %s failed", len(batch), self.name)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        elapsed = self._clock() - started
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
        self._learn(len(batch), elapsed)
        self._observer.batch(len(batch), [started - item.enqueued for item in batch], elapsed)

    def _learn(self, size: int, seconds: float) -> None:
        per_item = seconds / size
        weight = 0.2 if self._per_item else 1.0
        self._per_item += weight * (per_item - self._per_item)

    def close(self) -> None:
        """Stop the loop and the threads (pending items are cancelled)."""
        if self._task is not None:
            self._task.cancel()
        for task in self._running:
            task.cancel()
        for item in self._queue:
            item.future.cancel()
        self._queue.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
