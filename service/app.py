"""The BentoML service: one process does a request's whole path.

In each worker (BentoML's `workers`, `GRAFT_WORKERS`): the event loop parses and validates the
request (`graft.service.routes`, an ASGI app mounted with BentoML's public `mount_asgi_app`); a
thread pool decodes and preprocesses its images; each model's batcher runs them in greedy batches
on that model's ONNX Runtime session, in a thread of its own; the route shapes the JSON. BentoML
provides the process model, `/livez`, `/readyz`, `/metrics` and `bentoml build`.

Run: `graft serve --model DIR_OR_TAG` or `GRAFT_MODELS=... bentoml serve graft.service.app:Graft`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import numpy as np

from graft.artifact.image import ImageDecodeError
from graft.service.config import ServeConfig
from graft.service.decode import prepare
from graft.service.engine import Engine, deadline_after
from graft.service.errors import BadRequest, NotFound, Unavailable
from graft.service.models import load_models, pick_default
from graft.service.routes import build_app

log = logging.getLogger(__name__)
CONFIG = ServeConfig()


@bentoml.service(name="graft", workers=CONFIG.workers, traffic={"timeout": 120})
class Graft:
    """Loads and verifies every model at start (a broken artifact stops the worker with its reason),
    warms every batch bucket in the background (`/readyz` is 503 until done), then serves."""

    def __init__(self) -> None:
        self.config = CONFIG
        models = load_models(CONFIG.models)
        self.default_model = pick_default(models, CONFIG.default_model)
        self.engines = {name: Engine(model, CONFIG) for name, model in models.items()}
        self.decoder = ThreadPoolExecutor(CONFIG.decode_threads, thread_name_prefix="graft-decode")
        self.draining = False
        self._ready = threading.Event()
        threading.Thread(target=self._warm, name="graft-warmup", daemon=True).start()
        log.info("serving %s (default %s)", sorted(self.engines), self.default_model)

    def _warm(self) -> None:
        started = time.perf_counter()
        for engine in self.engines.values():
            engine.warmup()
        self._ready.set()
        log.info("ready: %d model(s) warmed in %.2fs", len(self.engines), time.perf_counter() - started)

    def __is_ready__(self) -> bool:
        return self._ready.is_set() and not self.draining

    @bentoml.on_shutdown
    def _drain(self) -> None:
        self.draining = True
        for engine in self.engines.values():
            engine.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    def check_ready(self) -> None:
        if self.draining:
            raise Unavailable(expected="a server accepting work", got="one shutting down; retry on another replica",
                              headers={"Retry-After": "1"})
        if not self._ready.is_set():
            raise Unavailable(expected="a ready server", got="one still warming up its models; retry shortly",
                              headers={"Retry-After": "1"})

    def engine(self, name: str, task: str | None = None) -> Engine:
        """The engine serving `name` (empty: the default model), checked against `task`."""
        engine = self.engines.get(name or self.default_model)
        if engine is None:
            raise NotFound(expected=f"model to be one of {sorted(self.engines)}", got=repr(name))
        if task is not None and engine.manifest.task != task:
            raise BadRequest(expected=f"a {task} model", got=f"{engine.manifest.task} model {engine.name!r}")
        return engine

    async def run_images(self, engine: Engine, images: list[bytes], *, timeout_ms: int | None = None) -> list[dict]:
        """Decode and preprocess `images` in the thread pool, then run them through `engine`'s batcher.

        Raises:
            BadRequest: too many images, or one that does not decode (named by its position).
            TooManyRequests, Unavailable: the batcher refused them (queue full, deadline).
        """
        self.check_ready()
        limit = self.config.max_latency_ms if timeout_ms is None else min(timeout_ms, self.config.max_latency_ms)
        deadline = deadline_after(limit)
        if len(images) > self.config.max_images:
            raise BadRequest(expected=f"at most {self.config.max_images} images per request", got=str(len(images)))
        loop = asyncio.get_running_loop()

        async def load(index: int, data: bytes) -> np.ndarray:
            try:
                return await loop.run_in_executor(self.decoder, functools.partial(
                    prepare, data, engine.manifest, engine.name, max_pixels=self.config.max_pixels,
                ))
            except ImageDecodeError as error:
                raise BadRequest(f"images[{index}]: {error}", expected=error.expected,
                                 got=f"images[{index}]: {error.got}") from None

        arrays = await asyncio.gather(*(load(i, data) for i, data in enumerate(images)))
        return await engine.infer(list(arrays), deadline=deadline)

    async def run_tensor(self, engine: Engine, batch: np.ndarray, *, timeout_ms: int | None = None) -> list[dict]:
        """Run already-preprocessed float32 [N, 3, H, W] inputs through `engine`'s batcher."""
        self.check_ready()
        limit = self.config.max_latency_ms if timeout_ms is None else min(timeout_ms, self.config.max_latency_ms)
        return await engine.infer(list(batch), deadline=deadline_after(limit))


Graft.mount_asgi_app(build_app(CONFIG), path="/")
