"""Open Inference Protocol (KServe v2) routes: Triton and KServe clients talk to graft unchanged.

HTTP glue only: `graft.service.oip` parses and encodes the protocol; the same targets, batcher,
limits and metrics as `/classify` and `/embed` do the work.
"""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graft import __version__
from graft.service import oip
from graft.service.endpoint import Endpoint, service, watched
from graft.service.engine import Target


def _signature(target: Target) -> oip.ModelSignature:
    signature = oip.ModelSignature.from_manifest(target.engine.name, target.engine.manifest)
    if target.head is None:
        return signature
    return dataclasses.replace(signature, name=target.name, version=target.version, labels=target.labels)


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
    _model(request)
    is_ready = service().__is_ready__()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def model_config(request: Request) -> Response:
    return JSONResponse(oip.model_config(_model(request)[1], service().config.max_batch_size))


async def infer(request: Request) -> Response:
    graft = service()
    target, signature = _model(request)
    body = await request.body()
    parsed = oip.parse_infer_request(body, request.headers.get("inference-header-content-length"))
    requested = oip.requested_outputs(parsed, signature)  # before running: a typo costs no inference
    kind, data = oip.model_input(parsed, signature)
    if kind == "images":
        work = graft.run_images(target.engine, data)
    else:
        work = graft.run_tensor(target.engine, data)
    results = await watched(request, work, target.name)
    content, headers = oip.encode_infer_response(signature, parsed.id, target.outputs(results), requested)
    return Response(content, headers=headers)


def _versioned(method: str, path: str, handler, summary: str, **options) -> tuple[Endpoint, Endpoint]:
    """The route and its `/versions/{version}` twin (both answer for the model's one version)."""
    versioned = path.replace("/models/{model}", "/models/{model}/versions/{version}")
    return (Endpoint(method, path, handler, summary, **options),
            Endpoint(method, versioned, handler, summary + " (at a version)", **options))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v2/health/live", live, "OIP: 200 while the server is alive."),
    Endpoint("GET", "/v2/health/ready", ready, "OIP: 200 once every model is warmed, else 503."),
    Endpoint("GET", "/v2", server_metadata, "OIP server metadata: name, version, extensions."),
    *_versioned("GET", "/v2/models/{model}", model_metadata,
                "OIP model metadata: inputs (images BYTES [N] or the preprocessed FP32 [N,3,H,W]) and outputs.",
                errors=(401, 404), access="api"),
    *_versioned("GET", "/v2/models/{model}/ready", model_ready, "OIP: 200 when the model is ready.", errors=(401, 404),
                access="api"),
    *_versioned("GET", "/v2/models/{model}/config", model_config, "Triton's model configuration (tritonclient reads it).",
                errors=(401, 404), access="api"),
    *_versioned("POST", "/v2/models/{model}/infer", infer,
                "OIP inference: JSON or binary tensors in and out; logits, probabilities, embedding; "
                "the classification extension.",
                errors=(400, 401, 404, 413, 429, 503), access="api", guarded=True),
)
