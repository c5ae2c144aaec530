"""Open Inference Protocol (KServe v2) routes: Triton and KServe clients talk to graft unchanged.

HTTP glue only: `graft.service.oip` parses and encodes the protocol; the same targets, batcher,
limits and metrics as `/classify` and `/embed` do the work, and those metrics are what the
statistics extension reports.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from typing import Awaitable

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from graft import __version__
from graft.service import oip, schemas
from graft.service.endpoint import Endpoint, service, watched
from graft.service.engine import Target
from graft.service.metrics import metrics
from graft.service.responses import JSONResponse


def _signature(target: Target) -> oip.ModelSignature:
    signature = oip.ModelSignature.from_manifest(target.engine.name, target.engine.manifest)
    if target.head is None:
        return signature
    return dataclasses.replace(signature, name=target.name, version=target.version, labels=target.labels)


def _served() -> list[Target]:
    """Every model, then every head, as `GET /models` lists them."""
    graft = service()
    heads = [Target(graft.engines[served.backbone], served.head) for _, served in graft.heads.items()]
    return [*(Target(engine) for engine in graft.engines.values()), *heads]


def _model(request: Request) -> tuple[Target, oip.ModelSignature]:
    """The target the path names, its version (if the path has one) checked."""
    target = service().target(request.path_params["model"])
    signature = _signature(target)
    signature.check_version(request.path_params.get("version"))
    return target, signature


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    is_ready = service().__is_ready__()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def server_metadata(request: Request) -> Response:
    return JSONResponse(oip.server_metadata(__version__))


async def model_metadata(request: Request) -> Response:
    return JSONResponse(oip.model_metadata(_model(request)[1]))


async def model_ready(request: Request) -> Response:
    name = _model(request)[1].name
    is_ready = service().__is_ready__()
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


async def model_config(request: Request) -> Response:
    return JSONResponse(oip.model_config(_model(request)[1], service().config.max_batch_size))


def _measured() -> dict[str, oip.ModelStatistics]:
    """Each model's figures from graft's metrics, as `/metrics` reports them: summed over the
    server's workers from prometheus_client's multi-process files (which BentoML sets up), else
    this process's own. A head's images run on its backbone and are counted there."""
    graft = metrics()
    fields = {family.name: field for field, metric in vars(graft).items() for family in metric.collect()}
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)
        families = registry.collect()
    else:
        families = [family for metric in vars(graft).values() for family in metric.collect()]
    # model -> (metric field, stage, sample suffix) -> value, summed over the other labels
    figures: dict[str, dict[tuple[str, str, str], float]] = defaultdict(lambda: defaultdict(float))
    for family in families:
        field = fields.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            key = (field, sample.labels.get("stage", ""), sample.name.removeprefix(family.name))
            figures[sample.labels["model"]][key] += sample.value
    return {model: _statistics(values) for model, values in figures.items()}


def _statistics(figures: dict[tuple[str, str, str], float]) -> oip.ModelStatistics:
    def stage(name: str, suffix: str) -> float:
        return figures[("stage_seconds", name, suffix)]

    return oip.ModelStatistics(
        images=int(figures[("batch_size", "", "_sum")]), batches=int(figures[("batch_size", "", "_count")]),
        refused=int(figures[("shed", "", "_total")]),
        queued=int(stage("queue", "_count")), queue_s=stage("queue", "_sum"),
        prepared=int(stage("decode", "_count")),
        prepare_s=sum(stage(name, "_sum") for name in ("decode", "preprocess", "normalize")),
        batch_s=stage("inference", "_sum"),
    )


async def statistics(request: Request) -> Response:
    """Every model's statistics, or the one the path names (at its version)."""
    targets = [_model(request)[0]] if "model" in request.path_params else _served()
    measured = _measured()
    return JSONResponse({"model_stats": [
        oip.model_statistics(signature, measured.get(signature.name, oip.ModelStatistics()))
        for signature in map(_signature, targets)
    ]})


async def repository_index(request: Request) -> Response:
    graft = service()
    ready_only = oip.index_ready_only(await request.body())
    if graft.__is_ready__():
        state, reason = "READY", ""
    elif graft.draining:
        state, reason = "UNAVAILABLE", "shutting down"
    else:
        state, reason = "LOADING", "warming up"
    models = [] if ready_only and state != "READY" else [_signature(target) for target in _served()]
    return JSONResponse(oip.repository_index(models, state, reason))


async def infer(request: Request) -> Response:
    arrived = time.monotonic()
    graft = service()
    target, signature = _model(request)
    body = await request.body()
    parsed = oip.parse_infer_request(body, request.headers.get("inference-header-content-length"))
    requested = oip.requested_outputs(parsed, signature)  # before running: a typo costs no inference
    kind, data = oip.model_input(parsed, signature)
    if kind == "images":
        work = graft.run_images(target.engine, data, arrived=arrived)
    elif kind == "texts":  # over the token limit: refused, an OIP response has no field to say it was cut
        work = _results(graft.run_texts(target.engine, data, arrived=arrived, truncate=False))
    else:
        work = graft.run_tensor(target.engine, data, arrived=arrived)
    results = await watched(request, work, target.name)
    content, headers = oip.encode_infer_response(signature, parsed.id, target.outputs(results), requested)
    return Response(content, headers=headers)


async def _results(work: Awaitable[tuple[list[dict], list]]) -> list[dict]:
    return (await work)[0]


def _versioned(method: str, path: str, handler, summary: str, **options) -> tuple[Endpoint, Endpoint]:
    """The route and its `/versions/{version}` twin (both answer for the model's one version)."""
    versioned = path.replace("/models/{model}", "/models/{model}/versions/{version}")
    return (Endpoint(method, path, handler, summary, **options),
            Endpoint(method, versioned, handler, summary + " (at a version)", **options))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v2/health/live", live, "OIP: 200 while the server is alive."),
    Endpoint("GET", "/v2/health/ready", ready, "OIP: 200 once every model is warmed, else 503."),
    Endpoint("GET", "/v2", server_metadata, "OIP server metadata: name, version, extensions."),
    # Before /v2/models/{model}, which would take "stats" for a model's name.
    Endpoint("GET", "/v2/models/stats", statistics,
             "Triton's statistics for every model: images run and refused, batches, queue and compute times "
             "(summed over workers).", errors=(401,), access="api"),
    *_versioned("GET", "/v2/models/{model}/stats", statistics, "Triton's statistics for one model.",
                errors=(401, 404), access="api"),
    Endpoint("POST", "/v2/repository/index", repository_index,
             "Triton's model repository index: every served model and head with its version and state.",
             errors=(400, 401), access="api"),
    *_versioned("GET", "/v2/models/{model}", model_metadata,
                "OIP model metadata: inputs (images BYTES [N] or the preprocessed FP32 [N,3,H,W]) and outputs.",
                errors=(401, 404), access="api"),
    *_versioned("GET", "/v2/models/{model}/ready", model_ready, "OIP: 200 when the model is ready: {name, ready}.",
                errors=(401, 404), access="api"),
    *_versioned("GET", "/v2/models/{model}/config", model_config, "Triton's model configuration (tritonclient reads it).",
                errors=(401, 404), access="api"),
    *_versioned("POST", "/v2/models/{model}/infer", infer,
                "OIP inference: JSON or binary tensors in and out; logits, probabilities, embedding; "
                "the classification extension.",
                request=schemas.InferRequestBody, errors=(400, 401, 404, 413, 429, 503), access="api", guarded=True),
)
