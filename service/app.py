"""The BentoML service: one process does a request's whole path.

In each worker (BentoML's `workers`, `GRAFT_WORKERS`): the event loop parses and validates the
request (`graft.service.routes`, an ASGI app mounted with BentoML's public `mount_asgi_app`); a
thread pool decodes and preprocesses its images; each model's batcher runs them in greedy batches
on that model's ONNX Runtime session, each batch in a thread of the batcher's; the route shapes the
JSON. BentoML provides the process model, `/livez`, `/readyz`, `/metrics` and `bentoml build`.

Run: `graft serve --model DIR_OR_TAG` or `GRAFT_MODELS=... bentoml serve graft.service.app:Graft`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np

from graft.artifact.errors import GraftError
from graft.artifact.image import ImageDecodeError
from graft.artifact.manifest import MODEL_FILE, verify_model_hash
from graft.artifact.store import is_store_tag
from graft.artifact.text import Encoded, TextError, truncated_indices
from graft.service import bentoml_api, logs
from graft.service.auth import Auth
from graft.service.cache import ResultCache
from graft.service.config import ConfigError, ServeConfig
from graft.service.decode import prepare
from graft.service.engine import Engine, Target, deadline_after
from graft.service.errors import BadRequest, NotFound, Unavailable
from graft.service.heads import HeadStore
from graft.service.metrics import metrics
from graft.service.middleware import RequestGuard
from graft.service.models import load_models, pick_default, split_reference
from graft.service.openai_api import OpenAIErrors
from graft.service.routes import build_app, guarded_paths

log = logging.getLogger(__name__)


def _config() -> ServeConfig:
    try:
        return ServeConfig()
    except ConfigError as error:
        raise SystemExit(f"graft: cannot serve: {error}") from None


CONFIG = _config()

INLINE_TOKENIZE_CHARS = 1024
"""Requests with at most this many characters of text are tokenised on the event loop: that takes
under 0.3 ms (about 0.3 us per character here), less than the hop to the thread pool and back, which
cost a 16-client load of one sentence per request 4-5% of its texts/s; longer ones go to the pool."""


def preflight(config: ServeConfig) -> None:
    """Refuse to start on an artifact that cannot serve: exit non-zero with one line saying why.

    NOTE: `bentoml serve` imports this module in its main process before it starts any worker, so
    a check here stops the whole server; a worker whose start fails would only be restarted by
    BentoML's process manager, forever, while `/readyz` stays unreachable.
    """
    from graft.artifact.runtime import open_session

    try:
        models = load_models(config.models)
        pick_default(models, config.default_model)
        for model in models.values():
            verify_model_hash(model.directory, model.manifest)
            open_session(model.directory / MODEL_FILE, optimize=False)  # this process only checks
        load_heads(config, {name: model.manifest for name, model in models.items()})
        if config.admin_token and config.heads_dir is None:
            log.warning("GRAFT_ADMIN_TOKEN is set but GRAFT_HEADS_DIR is not: POST /heads answers 501 until a "
                        "heads directory is configured")
    except GraftError as error:
        raise SystemExit(f"graft: cannot serve: {error}") from None
    except Exception as error:  # ONNX Runtime refusing the graph: its message, on one line
        message = " ".join(str(error).split())
        raise SystemExit(f"graft: cannot serve: expected a loadable ONNX graph, got {message}") from None


def load_heads(config: ServeConfig, backbones: dict) -> HeadStore:
    """The heads in `GRAFT_HEADS_DIR` and those named by `GRAFT_HEADS`, each checked against the
    served backbone it was fitted on (a head for none of them refuses to start)."""
    store = HeadStore(config.heads_dir, max_heads=config.max_heads)
    store.load(backbones)
    for reference in config.heads:
        name, _, directory = reference.partition("=")
        if not name or not directory:
            raise ConfigError(f"expected GRAFT_HEADS entries as NAME=DIR, got {reference!r}")
        store.add(name, Path(directory), backbones)
    return store


if bentoml.server_context.worker_index is None:
    # BentoML's main process (or in-process use). Workers skip it: each verifies its models again
    # as it builds their sessions, and a second CPU session per model would only slow their start.
    preflight(CONFIG)


class Worker:
    """One worker: every model's session and batcher, the heads, auth and the decode pool. Models
    are verified before any worker starts (`preflight`); each worker warms every batch bucket in the
    background (`/readyz` is 503 until done), then serves."""

    def __init__(self) -> None:
        if bentoml.server_context.worker_index is not None:  # a server's worker, not an in-process test
            logs.configure(CONFIG.log_format, CONFIG.log_level)
        self.config = CONFIG
        models = load_models(CONFIG.models)
        self.default_model = pick_default(models, CONFIG.default_model)
        self.engines = {name: Engine(model, CONFIG) for name, model in models.items()}
        self.heads = load_heads(CONFIG, {name: engine.manifest for name, engine in self.engines.items()})
        self.auth = Auth(CONFIG.admin_token, CONFIG.api_keys)
        self.decoder = ThreadPoolExecutor(CONFIG.decode_threads, thread_name_prefix="graft-decode")
        self.cache = ResultCache(CONFIG.cache_mb << 20)
        self.draining = False
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._drain_on_sigterm()
        threading.Thread(target=self._warm, name="graft-warmup", daemon=True).start()
        if CONFIG.heads_dir is not None:
            threading.Thread(target=self._follow_heads, name="graft-heads", daemon=True).start()
        log.info("serving %s (default %s; %d batch(es) at once per model)", sorted(self.engines), self.default_model,
                 CONFIG.concurrent_batches)

    def _warm(self) -> None:
        started = time.perf_counter()
        for engine in self.engines.values():
            engine.warmup()
        # Everything loaded so far (modules, sessions, BentoML's app) lives as long as the worker:
        # moved out of the collector's sight, a full collection under load takes under 10 ms instead
        # of 80-100 ms, a pause every request in flight (and every 429) waited out. Garbage first, so
        # none of it is frozen for good.
        gc.collect()
        gc.freeze()
        self._ready.set()
        log.info("ready: %d model(s) warmed in %.2fs (%d objects frozen out of garbage collection)",
                 len(self.engines), time.perf_counter() - started, gc.get_freeze_count())

    def _follow_heads(self) -> None:
        """Serve the heads other workers and replicas fit, replace or delete (`HeadStore.sync`)."""
        while not self._stopped.wait(CONFIG.heads_poll_ms / 1000):
            try:
                self.heads.sync()
            except Exception:  # a volume gone away for a moment: keep what is served, scan again
                log.exception("scanning %s for heads failed", CONFIG.heads_dir)

    def _drain_on_sigterm(self) -> None:
        """On SIGTERM, answer 503 to new work and `/readyz` at once, then let the server's own
        handler (uvicorn's graceful shutdown: stop accepting, finish what is in flight) run."""
        if threading.current_thread() is not threading.main_thread():
            return  # in-process test clients build the service off the main thread; no signals there
        previous = signal.getsignal(signal.SIGTERM)

        def drain(signum, frame) -> None:
            self.draining = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, drain)

    def __is_ready__(self) -> bool:
        return self._ready.is_set() and not self.draining

    @bentoml.on_shutdown
    def _drain(self) -> None:
        self.draining = True
        self._stopped.set()
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

    def target(self, name: str, task: str | None = None) -> Target:
        """What `name` serves (empty: the default model): a model, or a head on a model; checked
        against `task`."""
        name = name or self.default_model
        engine = self.engines.get(name)
        if engine is not None:
            target = Target(engine)
        elif (served := self.heads.get(name)) is not None:
            target = Target(self.engines[served.backbone], served.head)
        else:
            names = sorted([*self.engines, *(head for head, _ in self.heads.items())])
            raise NotFound(expected=f"model to be one of {names}", got=repr(name))
        if task is not None and target.task != task:
            raise BadRequest(expected=f"a {task} model", got=f"{target.task} model {target.name!r}")
        return target

    # BentoML's clients (`bentoml.SyncHTTPClient(url).classify(images=[Path("cat.jpg")], top_k=3)`)
    # see only these methods; they answer as POST /classify and /embed do (`graft.service.bentoml_api`).
    @bentoml.api(route=bentoml_api.ROUTES["classify"])
    async def classify(
        self, images: list[Path], top_k: bentoml_api.TopK = None, model: bentoml_api.ClassifyModel = "",
        timeout_ms: bentoml_api.Timeout = None, *, ctx: bentoml.Context,
    ) -> dict:
        """Top-k labels for each image (softmax probabilities, best first), one list per image in order."""
        return await bentoml_api.classify(ctx, images, top_k=top_k, model=model, timeout_ms=timeout_ms,
                                          arrived=time.monotonic())

    @bentoml.api(route=bentoml_api.ROUTES["embed"])
    async def embed(
        self, images: list[Path], model: bentoml_api.Model = "", normalize: bentoml_api.Normalize = True,
        timeout_ms: bentoml_api.Timeout = None, encoding: bentoml_api.Encoding = "json",
        dtype: bentoml_api.Dtype = "float32", *, ctx: bentoml.Context,
    ) -> dict:
        """One embedding per image, in order; L2-normalised unless normalize=false."""
        return await bentoml_api.embed(ctx, images, model=model, normalize=normalize, timeout_ms=timeout_ms,
                                       encoding=encoding, dtype=dtype, arrived=time.monotonic())

    async def run_images(
        self, engine: Engine, images: list[bytes], *, arrived: float | None = None, timeout_ms: int | None = None,
        max_images: int | None = None, field: str = "images", budget_per_chunk: bool = False,
    ) -> list[dict]:
        """Decode and preprocess `images` in the thread pool, then run them through `engine`'s batcher.

        More images than one batch (a head fit) go in batch-sized chunks, the next decoding while this
        one runs, so they neither fill the queue nor hold every decoded image in memory at once.
        Images in the exact-content cache (`GRAFT_CACHE_MB`) skip all of it.

        Args:
            arrived: when the request arrived (`time.monotonic()`; default: now). Its latency budget
                (`timeout_ms`, capped by GRAFT_MAX_LATENCY_MS) counts from then, once for the whole
                request: reading, decoding and queueing all count, and an image that can no longer
                make it is answered 503 without running.
            budget_per_chunk: each chunk gets a budget of its own instead (a head fit: admin work of
                up to GRAFT_MAX_FIT_IMAGES images, not a latency-bound request).

        Raises:
            BadRequest: too many images, or one that does not decode (named `field[position]`).
            TooManyRequests, Unavailable: the batcher refused them (queue full, deadline).
        """
        if engine.text is not None:
            raise BadRequest(expected=f'texts as a JSON body {{"texts": [...]}} for text model {engine.name!r}',
                             got="images")
        self._admit(len(images), max_images or self.config.max_images)
        limit = self._budget_ms(timeout_ms)
        deadline = deadline_after(limit, start=arrived)
        chunk = self.config.max_batch_size
        keys, results = await self.cache.lookup(engine.name, engine.manifest.version, images, self.decoder)
        misses = [position for position, result in enumerate(results) if result is None]
        computed: list[dict] = []
        pending = asyncio.ensure_future(self._prepare(engine, images, misses[:chunk], field))
        try:
            for start in range(0, len(misses), chunk):
                arrays = await pending
                if start + chunk < len(misses):
                    pending = asyncio.ensure_future(
                        self._prepare(engine, images, misses[start + chunk:start + 2 * chunk], field))
                computed += await engine.infer(arrays, deadline=deadline_after(limit) if budget_per_chunk else deadline)
        finally:
            pending.cancel()
        for position, result in zip(misses, computed):
            results[position] = result
            if self.cache.enabled:
                self.cache.put(keys[position], result)
        return [result for result in results if result is not None]  # every miss was computed

    async def _prepare(self, engine: Engine, images: list[bytes], positions: list[int], field: str) -> list[np.ndarray]:
        """The model inputs of `images` at `positions`, decoded in the thread pool."""
        loop = asyncio.get_running_loop()

        async def load(index: int, data: bytes) -> np.ndarray:
            try:
                return await loop.run_in_executor(self.decoder, functools.partial(
                    prepare, data, engine.manifest, engine.name, max_pixels=self.config.max_pixels,
                ))
            except ImageDecodeError as error:
                raise BadRequest(f"{field}[{index}]: {error}", expected=error.expected,
                                 got=f"{field}[{index}]: {error.got}") from None

        return list(await asyncio.gather(*(load(position, images[position]) for position in positions)))

    async def run_tensor(self, engine: Engine, batch: np.ndarray, *, arrived: float) -> list[dict]:
        """Run already-preprocessed float32 [N, 3, H, W] inputs through `engine`'s batcher, within
        GRAFT_MAX_LATENCY_MS of the request's arrival."""
        self._admit(len(batch), self.config.max_images)
        return await engine.infer(list(batch), deadline=deadline_after(self._budget_ms(None), start=arrived))

    async def run_texts(
        self, engine: Engine, texts: list[str], *, arrived: float | None = None, timeout_ms: int | None = None,
        truncate: bool = True, max_texts: int | None = None, budget_per_chunk: bool = False,
    ) -> tuple[list[dict], list[Encoded]]:
        """Tokenise `texts` (inline up to `INLINE_TOKENIZE_CHARS`, else in the thread pool) and run them
        through text model `engine`'s batcher, in batch-sized chunks, within the request's latency
        budget (as `run_images`).

        Returns:
            One result per text, in order, and each text's tokens (`truncated`: cut to the model's limit).

        Raises:
            BadRequest: an image model, too many texts, an empty text, one over GRAFT_MAX_TEXT_CHARS,
                or (without `truncate`) one over the model's token limit.
        """
        if engine.text is None:
            raise BadRequest(expected=f"images in a multipart form for image model {engine.name!r}", got="texts")
        self.check_ready()
        most = max_texts or self.config.max_images
        if len(texts) > most:
            raise BadRequest(expected=f"at most {most} texts per request", got=str(len(texts)))
        max_chars = self.config.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > max_chars:
                raise BadRequest(expected=f"texts of at most {max_chars} characters (GRAFT_MAX_TEXT_CHARS)",
                                 got=f"texts[{index}] of {len(text)}")
        started = time.perf_counter()
        try:
            if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                encoded = engine.text.tokenizer.encode(texts)
            else:
                encoded = await asyncio.get_running_loop().run_in_executor(
                    self.decoder, engine.text.tokenizer.encode, texts)
        except TextError as error:
            raise BadRequest(f"texts: {error}", expected=error.expected, got=error.got) from None
        metrics().observe_stage("tokenize", engine.name, time.perf_counter() - started)
        truncated = truncated_indices(encoded)
        if truncated and not truncate:
            raise BadRequest(expected=f"texts of at most {engine.text.tokenizer.spec.max_tokens} tokens, or "
                             "truncate=true", got=f"longer texts at indices {truncated}")
        limit = self._budget_ms(timeout_ms)
        deadline = deadline_after(limit, start=arrived)
        chunk = self.config.max_batch_size
        results: list[dict] = []
        for start in range(0, len(encoded), chunk):
            results += await engine.infer([encoding.ids for encoding in encoded[start:start + chunk]],
                                          deadline=deadline_after(limit) if budget_per_chunk else deadline)
        return results, encoded

    def _admit(self, count: int, max_images: int) -> None:
        """Refuse work while not ready (503) and requests with too many images (400)."""
        self.check_ready()
        if count > max_images:
            raise BadRequest(expected=f"at most {max_images} images per request", got=str(count))

    def _budget_ms(self, timeout_ms: int | None) -> int:
        """A request's latency budget: its own timeout, capped by GRAFT_MAX_LATENCY_MS."""
        return self.config.max_latency_ms if timeout_ms is None else min(timeout_ms, self.config.max_latency_ms)


# The models served from the BentoML store, declared so `bentoml build` bundles them into the Bento
# and BentoML resolves them before the server starts (directories are the operator's to provide).
for index, reference in enumerate(split_reference(ref)[1] for ref in CONFIG.models):
    if is_store_tag(reference):
        setattr(Worker, f"bundled_model_{index}", bentoml.models.BentoModel(reference))

Graft = bentoml.service(
    name="graft", workers=CONFIG.workers, traffic={"timeout": 120},
    # A log line per request costs the event loop more than refusing one (429) does under overload;
    # graft logs every refusal and fault itself and counts requests in /metrics.
    logging={"access": {"enabled": CONFIG.access_log}},
    # OpenTelemetry makes three spans per request even when nothing exports them, the largest cost
    # of answering a 429; graft's routes are traced only when asked (GRAFT_TRACING=1).
    tracing={} if CONFIG.tracing else {"excluded_urls": [".*"]},
)(Worker)
Graft.mount_asgi_app(build_app(), path="/")
Graft.add_asgi_middleware(OpenAIErrors)  # before the guard, so that it wraps the guard's refusals
Graft.add_asgi_middleware(
    RequestGuard, guarded=guarded_paths(also=bentoml_api.ROUTES.values()), max_request_bytes=CONFIG.max_request_bytes,
    max_concurrency=CONFIG.max_concurrency,
)
Graft.add_asgi_middleware(bentoml_api.ClientRouteGuard, max_images=CONFIG.max_images)  # inside the guard's limits
