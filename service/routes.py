"""graft's HTTP routes: one table, one exception handler, one JSON error shape.

The app is a Starlette app that `graft.service.app` mounts on the BentoML service with
`mount_asgi_app`. BentoML keeps `/livez`, `/readyz` and `/metrics`; every other path comes here,
so unknown paths and wrong methods are answered in graft's JSON shape too. Handlers find the
running service with `bentoml.get_current_service()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import bentoml
import numpy as np
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from graft.service import schemas
from graft.service.config import ServeConfig
from graft.service.errors import BadRequest, MethodNotAllowed, NotFound, ServiceError
from graft.service.forms import Field, boolean, positive_int, read_form, text
from graft.service.metrics import metrics
from graft.service.middleware import RequestGuard

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

MODEL = Field(text, "", "model name (GET /models); empty for the default model")
TIMEOUT = Field(positive_int, None, "a positive integer: milliseconds this request may take (capped by "
                "GRAFT_MAX_LATENCY_MS); images that cannot make it are answered 503")
CLASSIFY_FIELDS = {
    "top_k": Field(positive_int, 5, "a positive integer: labels per image, best first"),
    "model": MODEL,
    "timeout_ms": TIMEOUT,
}
EMBED_FIELDS = {
    "model": MODEL,
    "normalize": Field(boolean, True, "true or false: L2-normalise each embedding"),
    "timeout_ms": TIMEOUT,
}


@dataclass(frozen=True)
class Endpoint:
    """One route: what `/docs` says about it and the handler that serves it."""

    method: str
    path: str
    handler: Handler
    summary: str
    form: dict[str, Field] | None = None  # multipart option fields; `images` file parts are implied
    response: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    inference: bool = False  # guarded by the in-flight limit (and API keys, where configured)


def service() -> Any:
    """The running `Graft` service instance of this worker."""
    return bentoml.get_current_service()


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next message is the client's disconnect (or, once the
    # response is sent, the server's own end of the request).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watched(request: Request, work: Awaitable[Any], model: str) -> Any:
    """Await `work` unless the client goes away first: then cancel it, so its queued images are
    dropped before they run, and raise `ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    metrics().shed.labels(reason="client_gone", model=model).inc()
    raise ClientGone()


class ClientGone(Exception):
    """The client disconnected before its results were ready; nothing is sent."""


async def classify(request: Request) -> Response:
    graft = service()
    form = await read_form(request, CLASSIFY_FIELDS, max_images=graft.config.max_images)
    engine = graft.engine(form.options["model"], "classifier")
    results = await watched(
        request, graft.run_images(engine, form.images, timeout_ms=form.options["timeout_ms"]), engine.name,
    )
    labels = engine.manifest.labels
    k = min(form.options["top_k"], len(labels))
    predictions = []
    for result in results:
        probabilities = result["probabilities"]
        best = np.argsort(-probabilities, kind="stable")[:k]
        predictions.append([
            {"label": labels[i], "index": int(i), "score": float(probabilities[i])} for i in best
        ])
    return JSONResponse({
        "model": engine.name, "top_k": k, "top_k_capped": form.options["top_k"] > k, "predictions": predictions,
    })


async def embed(request: Request) -> Response:
    graft = service()
    form = await read_form(request, EMBED_FIELDS, max_images=graft.config.max_images)
    engine = graft.engine(form.options["model"])
    results = await watched(
        request, graft.run_images(engine, form.images, timeout_ms=form.options["timeout_ms"]), engine.name,
    )
    vectors = np.stack([result["embedding"] for result in results])
    if form.options["normalize"]:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return JSONResponse({
        "model": engine.name, "dim": int(vectors.shape[1]), "normalized": form.options["normalize"],
        "embeddings": vectors.tolist(),
    })


async def list_models(request: Request) -> Response:
    graft = service()
    return JSONResponse({
        "default": graft.default_model, "models": [engine.summary() for engine in graft.engines.values()],
    })


async def openapi(request: Request) -> Response:
    from graft.service.docs import openapi_spec

    return JSONResponse(openapi_spec(ENDPOINTS, BENTOML_ROUTES))


async def docs_page(request: Request) -> Response:
    from graft.service.docs import html_page, openapi_spec

    return HTMLResponse(html_page(openapi_spec(ENDPOINTS, BENTOML_ROUTES)))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/classify", classify,
             "Top-k labels for each image (softmax probabilities, best first), one list per image in order.",
             form=CLASSIFY_FIELDS, response=schemas.ClassifyResponse, errors=(400, 404, 413, 429, 503),
             inference=True),
    Endpoint("POST", "/embed", embed, "One embedding per image, in order; L2-normalised unless normalize=false.",
             form=EMBED_FIELDS, response=schemas.EmbedResponse, errors=(400, 404, 413, 429, 503), inference=True),
    Endpoint("GET", "/models", list_models,
             "The served models: task, label count, embedding dim, version, execution provider.",
             response=schemas.ModelsResponse),
    Endpoint("GET", "/docs", docs_page, "This page: every route with its fields, responses and errors."),
    Endpoint("GET", "/", docs_page, "The same page as /docs."),
    Endpoint("GET", "/openapi.json", openapi, "The OpenAPI 3 description of every route."),
    Endpoint("GET", "/docs.json", openapi, "The same as /openapi.json (the path BentoML used)."),
)

BENTOML_ROUTES = {
    "/livez": "200 while the process is alive.",
    "/readyz": "200 once every model is loaded and warmed; 503 before, and while shutting down.",
    "/metrics": "Prometheus metrics: graft_stage_duration_seconds, graft_batch_size, graft_queue_depth, "
                "graft_shed_images, and BentoML's request metrics.",
}


async def not_found(request: Request) -> Response:
    """Every path and method the table does not serve: 405 for a known path, else 404."""
    path = request.url.path.rstrip("/") or "/"
    methods = sorted({endpoint.method for endpoint in ENDPOINTS if endpoint.path == path})
    if methods:
        raise MethodNotAllowed(expected=f"{' or '.join(methods)} on {path}", got=request.method,
                               headers={"Allow": ", ".join(methods)})
    routes = [f"{e.method} {e.path}" for e in ENDPOINTS] + [f"GET {path}" for path in BENTOML_ROUTES]
    raise NotFound(expected=f"one of {', '.join(routes)}", got=f"{request.method} {request.url.path}")


async def service_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, ServiceError):  # Starlette's HTTPException: a body it could not parse
        error = BadRequest(expected="a well-formed request", got=str(getattr(error, "detail", error)))
    if error.status not in (429, 503):  # overload is counted in metrics, not logged per request
        log.info("%d %s %s: %s", error.status, request.method, request.url.path, error.message)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def client_gone(request: Request, error: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it; uvicorn drops it


async def server_fault(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse(
        {"error": "internal server error; the server log has the details", "expected": None, "got": None},
        status_code=500,
    )


def build_app(config: ServeConfig) -> Starlette:
    """The Starlette app for every graft route, with its guard and exception handlers."""
    routes = []
    for endpoint in ENDPOINTS:
        routes.append(Route(endpoint.path, endpoint.handler, methods=[endpoint.method]))
        if endpoint.path != "/":  # accept a trailing slash instead of redirecting (307)
            routes.append(Route(endpoint.path + "/", endpoint.handler, methods=[endpoint.method]))
    routes.append(Route("/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    guarded = frozenset(p for e in ENDPOINTS if e.inference for p in (e.path, e.path + "/"))
    return Starlette(
        routes=routes,
        middleware=[Middleware(
            RequestGuard, paths=guarded, max_request_bytes=config.max_request_bytes,
            max_concurrency=config.max_concurrency,
        )],
        exception_handlers={
            ServiceError: service_error, HTTPException: service_error, ClientGone: client_gone,
            ClientDisconnect: client_gone, Exception: server_fault,
        },
    )
