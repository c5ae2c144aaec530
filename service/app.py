"""The BentoML services: `Graft` (public HTTP API) and `GraftInference` (batched ONNX Runtime).

Why two services: BentoML's adaptive batching merges calls of a batchable API, and such an API takes
exactly one batch argument, so per-request options (`top_k`, `model`, `normalize`) cannot ride
beside it. `Graft` therefore owns everything per request — parsing, validation, decode, resize and
crop in a thread pool, top-k, embedding normalisation, errors — and sends each image to
`GraftInference.infer` as an `Item` (model name + uint8 pixels). BentoML batches items from
concurrent requests into one call; `infer` groups them by model, normalises each group as one array
and runs one ONNX Runtime batch per model. Served with `bentoml serve`, the two run in separate
processes, so decoding and inference use different cores and GILs.

Run: `graft serve --model DIR_OR_TAG` or `GRAFT_MODELS=... bentoml serve service.app:Graft`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from http import HTTPStatus
from pathlib import Path

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException, ServiceUnavailable
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

from graft.artifact.preprocessing import normalize
from graft.service.config import ServeConfig
from graft.service.decode import prepare
from graft.service.errors import BadRequest, Overloaded, UnknownModel, error_body, status_of
from graft.service.metrics import metrics
from graft.service.middleware import JsonNotFound, RequestGuard
from graft.service.models import ServedModel, load_models, pick_default
from graft.service.runtime import Runner
from graft.service.schemas import ClassifyResponse, EmbedResponse, Item, ItemResult, ModelName, Prediction, TopK

log = logging.getLogger(__name__)
CONFIG = ServeConfig()
API_ROUTES = frozenset({"/classify", "/embed"})


def _strict_multipart():
    """Replace BentoML's multipart/form parser in this process with a stricter one.

    NOTE: BentoML 1.4's parser downloads any text value sent in a file field (`-F images=http://..`,
    a server-side request forgery hole), and answers a malformed body, too many parts, or a file in
    a non-file field with a 500. This one refuses the first and reports the others as 400; otherwise
    it builds the same input (file fields as lists of uploads, other values JSON-decoded).
    """
    import json

    from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
    from _bentoml_sdk.typing_utils import is_list_type
    from starlette.datastructures import UploadFile

    class StrictMultipartSerde(MultipartSerde):
        async def parse_request(self, request, cls):
            try:
                form = await request.form(max_files=CONFIG.max_images, max_fields=64)
            except HTTPException as error:
                raise BadInput(
                    f"expected a well-formed form body with at most {CONFIG.max_images} files, "
                    f"got: {error.detail}"
                ) from None
            data = {}
            for key in form:
                values = form.getlist(key)
                files = [value for value in values if isinstance(value, UploadFile)]
                if key in cls.multipart_fields:
                    if len(files) != len(values):
                        raise BadInput(
                            f"expected file uploads in field {key!r}, got a text value; "
                            "the server does not fetch URLs"
                        )
                    data[key] = files if is_list_type(cls.model_fields[key].annotation) else files[0]
                elif files:
                    raise BadInput(f"expected files only in fields {cls.multipart_fields}, got a file in {key!r}")
                else:
                    try:
                        data[key] = json.loads(values[0])
                    except (ValueError, RecursionError):
                        # Not JSON (JSONDecodeError), a 5000-digit int, or '[' nested past the
                        # recursion limit: keep the text and let validation answer 400.
                        data[key] = values[0]
            return cls.model_validate(data)

    for media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        ALL_SERDE[media_type] = StrictMultipartSerde  # type: ignore[index]


_strict_multipart()


def _greedy_batching():
    """Make BentoML's adaptive batcher dispatch as soon as the worker is free (greedy batching).

    NOTE: BentoML 1.4's dispatcher holds a request back to wait for batch partners for as long as
    recent batches waited on average, and under load that average includes time queued behind the
    running batch. After a burst, a lone request therefore waits for partners that never come:
    measured on 2 cores, p50 at one client went from 28 ms to 245 ms after a 64-client burst, and
    the learned wait decays only 5% per 50 batches. With the wait pinned at 0, a batch starts as soon
    as the previous one ends and takes everything that queued meanwhile, which is what a busy CPU or
    GPU wants anyway; cancelling requests that cannot meet `max_latency_ms` is unchanged.
    """
    from bentoml._internal.marshal.dispatcher import Optimizer

    learn = Optimizer.trigger_refresh
    if getattr(learn, "greedy", False):
        return

    def trigger_refresh(self) -> None:
        learn(self)  # keeps the per-item cost estimate used for max-latency shedding
        self.wait = 0

    trigger_refresh.greedy = True
    Optimizer.trigger_refresh = trigger_refresh


_greedy_batching()


# NOTE: `runner_connection` is how often the API service's client for this service replaces its
# connection pool. BentoML 1.4.39 closes the old pool under calls still in flight (every 100 calls by
# default: bentoml/BentoML#5540), so we make replacement rare instead of routine.
@bentoml.service(
    name="graft-inference",
    traffic={"timeout": 120},
    runner_connection={"max_requests": 1_000_000_000, "max_age": 86_400.0},
)
class GraftInference:
    """Loads one ONNX Runtime session per model, warms every batch bucket, then runs batches."""

    def __init__(self) -> None:
        self.models = load_models(CONFIG.models)
        self.runners: dict[str, Runner] = {}
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        metrics()
        # Sessions load and warm in the background, so /livez answers and /readyz says 503 meanwhile.
        threading.Thread(target=self._load, name="graft-warmup", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            for name, model in self.models.items():
                runner = Runner(
                    model, buckets=CONFIG.batch_buckets(), providers=CONFIG.providers,
                    intra_op_threads=CONFIG.intra_op_threads, trt_cache_dir=CONFIG.trt_cache_dir,
                    intra_op_spinning=CONFIG.intra_op_spinning,
                )
                runner.warmup()
                self.runners[name] = runner
        except Exception as error:  # a broken artifact: stay alive but never ready, and say why
            log.exception("loading models failed")
            self._failed = error
            return
        self._ready.set()
        log.info("ready: %d model(s) loaded and warmed in %.2fs", len(self.runners), time.perf_counter() - started)

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, items: list[Item]) -> list[ItemResult]:
        """Run a batch merged from concurrent requests: one ONNX Runtime call per model in it."""
        if not self._ready.is_set():
            raise ServiceUnavailable(f"models not ready: {self._failed or 'still warming up'}")
        groups: dict[str, list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            groups[item.model].append(position)
        results: list[ItemResult | None] = [None] * len(items)
        recorder = metrics()
        for name, positions in groups.items():
            runner = self.runners[name]
            started = time.perf_counter()
            batch = normalize(np.stack([items[p].pixels for p in positions]), runner.manifest.preprocessing)
            normalized = time.perf_counter()
            outputs = runner.infer(batch)
            recorder.observe_stage("normalize", name, normalized - started)
            recorder.observe_stage("inference", name, time.perf_counter() - normalized)
            recorder.observe_batch(name, len(positions))
            for position, result in zip(positions, runner.postprocess(outputs)):
                results[position] = ItemResult(**result)
        return results

    @bentoml.api
    def describe(self) -> list[dict]:
        """Each model's summary with the execution provider its session runs on."""
        return [
            {**model.summary(), "provider": self.runners[name].provider if name in self.runners else None}
            for name, model in self.models.items()
        ]


def _fix_media_types(service) -> None:
    """Compute each API's response media type once instead of on every response.

    NOTE: for a list-typed output (`infer` returns list[ItemResult]) BentoML 1.4 derives the media
    type from a freshly generated JSON schema on every response: 1.7 ms per call here, on the
    critical path of every batch (end to end it is within the noise of `graft bench service`).
    Storing the value it computes makes that a lookup.
    """
    for api in service.apis.values():
        api.output_spec.media_type = api.output_spec.mime_type()


_fix_media_types(GraftInference)


@bentoml.service(name="graft", traffic={"timeout": 120})
class Graft:
    """The public API: /classify, /embed, GET /models; BentoML adds /livez, /readyz, /metrics, the
    OpenAPI spec at /docs.json and its Swagger UI at /."""

    inference = bentoml.depends(GraftInference)

    def __init__(self) -> None:
        self.models = load_models(CONFIG.models)
        self.default_model = pick_default(self.models, CONFIG.default_model)
        self.decode_limiter = anyio.CapacityLimiter(CONFIG.decode_threads)
        metrics()
        log.info("serving %s (default %s)", sorted(self.models), self.default_model)

    def __is_ready__(self) -> bool:
        # NOTE: under `bentoml serve` the dependency is a remote proxy and BentoML's /readyz probes it
        # itself; in-process (tests) it is a plain instance, asked here.
        inference = self.inference
        return inference.__is_ready__() if isinstance(inference, GraftInference.inner) else True

    def _model(self, name: str, task: str | None) -> ServedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            raise UnknownModel(f"expected model to be one of {sorted(self.models)}, got {name!r}")
        if task is not None and model.manifest.task != task:
            raise BadRequest(f"expected a {task} model, got {model.manifest.task} model {model.name!r}")
        return model

    async def _run(self, images: list[Path], model: ServedModel) -> list[ItemResult]:
        """Decode and preprocess every image in worker threads, then run them through the batcher."""
        if not images:
            raise BadRequest("expected one or more file parts named 'images', got none")
        if len(images) > CONFIG.max_images:
            raise BadRequest(f"expected at most {CONFIG.max_images} images per request, got {len(images)}")

        def load(index: int, path: Path) -> np.ndarray:
            try:
                return prepare(path.read_bytes(), model, max_pixels=CONFIG.max_pixels)
            except Exception as error:
                if status_of(error) is None:
                    raise
                raise BadRequest(f"images[{index}]: {error}") from error

        arrays = await asyncio.gather(
            *(anyio.to_thread.run_sync(load, i, path, limiter=self.decode_limiter) for i, path in enumerate(images))
        )
        return await self._infer([Item(model=model.name, pixels=array) for array in arrays])

    async def _infer(self, items: list[Item]) -> list[ItemResult]:
        """Send items to the batched inference API; its unavailability becomes a 503 for the client."""
        try:
            try:
                return await self.inference.to_async.infer(items)
            except aiohttp.ClientConnectionError as error:
                # A dropped connection to the inference worker (or the pool replacement race noted
                # at GraftInference): inference is idempotent, so retry once on a fresh connection.
                log.warning("inference call failed (%r); retrying once", error)
                return await self.inference.to_async.infer(items)
        except aiohttp.ClientConnectionError as error:
            raise Overloaded(f"expected the inference worker to be reachable, got {error!r}; retry shortly") from error
        except BentoMLException as error:
            if error.error_code not in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
                raise
            raise Overloaded(
                "expected the inference service to accept work, got 503 (warming up or overloaded); retry shortly"
            ) from error

    @staticmethod
    def _error(error: Exception) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=status_of(error))

    @bentoml.api(route="/classify")
    async def classify(self, images: list[Path], top_k: TopK = 5, model: ModelName = "") -> ClassifyResponse:
        """Top-k ImageNet-style predictions (softmax probabilities, best first) for each image, in order."""
        try:
            served = self._model(model, "classifier")
            results = await self._run(images, served)
        except Exception as error:
            if status_of(error) is None:
                raise
            return self._error(error)
        labels = served.manifest.labels
        k = min(top_k, len(labels))
        predictions = []
        for result in results:
            best = np.argsort(-result.probabilities, kind="stable")[:k]
            predictions.append([
                Prediction(label=labels[i], index=int(i), score=float(result.probabilities[i])) for i in best
            ])
        return ClassifyResponse(model=served.name, top_k=k, top_k_capped=top_k > k, predictions=predictions)

    @bentoml.api(route="/embed")
    async def embed(self, images: list[Path], model: ModelName = "", normalize: bool = True) -> EmbedResponse:
        """One embedding per image, in order; L2-normalised unless `normalize` is false."""
        try:
            served = self._model(model, None)
            results = await self._run(images, served)
        except Exception as error:
            if status_of(error) is None:
                raise
            return self._error(error)
        vectors = np.stack([result.embedding for result in results])
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbedResponse(
            model=served.name, dim=int(vectors.shape[1]), normalized=normalize, embeddings=vectors.tolist()
        )

    async def describe(self) -> dict:
        """The loaded models: task, label count, embedding dim, version, execution provider."""
        return {"default": self.default_model, "models": await self.inference.to_async.describe()}


async def _list_models(request) -> JSONResponse:
    """`GET /models` (BentoML APIs are POST-only, so this route is a small mounted Starlette app)."""
    return JSONResponse(await bentoml.get_current_service().describe())


async def _method_not_allowed(request, error: HTTPException) -> JSONResponse:
    """Starlette's 405 is plain text; answer in the service's JSON error shape instead."""
    return JSONResponse(
        error_body(f"expected GET on {request.url.path}, got {request.method}"),
        status_code=405, headers=error.headers,
    )


Graft.mount_asgi_app(
    Starlette(routes=[Route("/models", _list_models, methods=["GET"])],
              exception_handlers={405: _method_not_allowed}),
    path="/",
)
Graft.add_asgi_middleware(
    JsonNotFound,
    routes="POST /classify, POST /embed, GET /models, /livez, /readyz, /metrics, /docs.json",
)
Graft.add_asgi_middleware(
    RequestGuard, paths=API_ROUTES, max_request_bytes=CONFIG.max_request_bytes,
    max_concurrency=CONFIG.max_concurrency,
)
