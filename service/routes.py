"""graft's HTTP routes: one table, one exception handler, one JSON error shape.

The app is a Starlette app that `graft.service.app` mounts on the BentoML service with
`mount_asgi_app`. BentoML keeps `/livez`, `/readyz` and `/metrics`; every other path comes here,
so unknown paths and wrong methods are answered in graft's JSON shape too. Handlers find the
running service with `bentoml.get_current_service()`.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Route

from graft.artifact.postprocess import top_k
from graft.artifact.text import truncated_indices
from graft.service import embeddings, head_routes, openai_api, schemas, texts, v2
from graft.service.endpoint import ClientGone, Endpoint, Handler, service, watched
from graft.service.engine import Engine, Target
from graft.service.errors import BadRequest, MethodNotAllowed, NotFound, ServiceError
from graft.service.forms import Field, boolean, choice, positive_int, read_form, text
from graft.service.responses import JSONResponse

log = logging.getLogger(__name__)

MODEL = Field(text, "", "model or head name (GET /models); empty for the default model")
CLASSIFY_MODEL = Field(text, "", "model or head name (GET /models); empty for the default model; several heads "
                       "on one backbone, comma-separated, answer {\"models\": {name: result}} from one backbone "
                       "pass per image")
TIMEOUT = Field(positive_int, None, "a positive integer: milliseconds this request may take (capped by "
                "GRAFT_MAX_LATENCY_MS); images that cannot make it are answered 503")
CLASSIFY_FIELDS = {
    "top_k": Field(positive_int, 5, "a positive integer: labels per image, best first"),
    "model": CLASSIFY_MODEL,
    "timeout_ms": TIMEOUT,
}
EMBED_FIELDS = {
    "model": MODEL,
    "normalize": Field(boolean, True, "true or false: L2-normalise each embedding"),
    "timeout_ms": TIMEOUT,
    "encoding": Field(choice(*embeddings.ENCODINGS), "json", "json (numbers), base64 (JSON, each embedding a "
                      "base64 string of little-endian floats), binary (application/octet-stream: the [N, D] array's "
                      "bytes) or npy (a NumPy .npy file); binary and npy describe the array in Graft-Shape, "
                      "Graft-Dtype, Graft-Model and Graft-Normalized headers"),
    "dtype": Field(choice(*embeddings.DTYPES), "float32", "float32 or float16 (half the bytes; not with json)"),
}


def _top_k(target: Target, results: list[dict], k: int, *, asked: bool) -> dict:
    """The top-k answer; `top_k_capped` only when the client `asked` for more labels than there are
    (a 3-label head answers 3 under the default of 5 without a warning)."""
    labels = target.labels
    best, scores = top_k(target.outputs(results, ("probabilities",))["probabilities"], k)
    predictions = [
        [{"label": labels[i], "index": i, "score": score} for i, score in zip(row.tolist(), row_scores.tolist())]
        for row, row_scores in zip(best, scores)
    ]
    returned = best.shape[1]
    return {"model": target.name, "top_k": returned, "top_k_capped": asked and k > returned, "predictions": predictions}


async def classify_images(
    request: Request, images: list[bytes], *, model: str, top_k: int | None, timeout_ms: int | None, arrived: float,
) -> dict:
    """`/classify`'s answer for `images`, whichever way they came: a form or a BentoML client
    (`graft.service.bentoml_api`). `top_k` None: the default, not asked for; `model` may name several
    heads on one backbone, comma-separated."""
    return await _classify(
        request, model, top_k,
        lambda engine: service().run_images(engine, images, arrived=arrived, timeout_ms=timeout_ms),
    )


async def _classify(
    request: Request, model: str, top_k: int | None, run: Callable[[Engine], Awaitable[list[dict]]],
) -> dict:
    """The top-k answer of `model` (several heads on one backbone: comma-separated) for the items
    `run` puts through that backbone."""
    targets = [service().target(name.strip(), "classifier") for name in model.split(",")]
    engine = targets[0].engine
    if any(target.engine is not engine for target in targets):
        raise BadRequest(expected="models (heads) on one backbone when several are named",
                         got=", ".join(f"{t.name} on {t.engine.name}" for t in targets))
    results = await watched(request, run(engine), targets[0].name)
    k, asked = top_k or CLASSIFY_FIELDS["top_k"].default, top_k is not None
    if len(targets) == 1:
        return _top_k(targets[0], results, k, asked=asked)
    # Several heads on one backbone: each image ran through the backbone once, for all of them.
    return {"models": {t.name: _top_k(t, results, k, asked=asked) for t in targets}}


async def classify_texts(request: Request, arrived: float) -> dict:
    """`/classify`'s answer for a JSON body of texts (a text model's heads); `truncated` lists the
    texts cut to the model's token limit."""
    body = await texts.read_texts(request, texts.ClassifyTexts)
    truncated: list[int] = []

    async def run(engine: Engine) -> list[dict]:
        results, cut = await service().run_texts(engine, body.texts, arrived=arrived, timeout_ms=body.timeout_ms,
                                                 truncate=body.truncate)
        truncated.extend(truncated_indices(cut))
        return results

    return {**await _classify(request, body.model, body.top_k, run), "truncated": truncated}


async def classify(request: Request) -> Response:
    arrived = time.monotonic()
    if texts.is_json(request):
        return JSONResponse(await classify_texts(request, arrived))
    form = await read_form(request, CLASSIFY_FIELDS, max_images=service().config.max_images)
    options = form.options
    return JSONResponse(await classify_images(
        request, form.images, model=options["model"], top_k=options["top_k"] if "top_k" in form.sent else None,
        timeout_ms=options["timeout_ms"], arrived=arrived,
    ))


async def embed(request: Request) -> Response:
    arrived = time.monotonic()
    if texts.is_json(request):
        body = await texts.read_texts(request, texts.EmbedTexts)
        name, vectors, truncated = await embeddings.embed_texts(request, body, arrived=arrived)
        return embeddings.embeddings_response(name, vectors, normalized=body.normalize, encoding=body.encoding,
                                              dtype=body.dtype, truncated=truncated)
    form = await read_form(request, EMBED_FIELDS, max_images=service().config.max_images)
    options = form.options
    name, vectors = await embeddings.embed_request(
        request, form.images, model=options["model"], normalize=options["normalize"], encoding=options["encoding"],
        dtype=options["dtype"], timeout_ms=options["timeout_ms"], arrived=arrived,
    )
    return embeddings.embeddings_response(name, vectors, normalized=options["normalize"],
                                          encoding=options["encoding"], dtype=options["dtype"])


async def list_models(request: Request) -> Response:
    graft = service()
    heads = [(served.backbone, graft.heads.summary(name)) for name, served in graft.heads.items()]
    return JSONResponse({"default": graft.default_model, "models": [
        {**engine.summary(), "heads": [summary for backbone, summary in heads if backbone == name]}
        for name, engine in graft.engines.items()
    ]})


async def openapi(request: Request) -> Response:
    from graft.service.docs import openapi_spec

    return JSONResponse(openapi_spec(ENDPOINTS, BENTOML_ROUTES, server=_base_url(request)))


async def docs_page(request: Request) -> Response:
    from graft.service.docs import html_page, openapi_spec

    return HTMLResponse(html_page(openapi_spec(ENDPOINTS, BENTOML_ROUTES, server=_base_url(request))))


def _base_url(request: Request) -> str:
    """The URL the client used to reach this server (what its examples should name)."""
    return str(request.base_url).rstrip("/")


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/classify", classify,
             "Top-k labels for each image (softmax probabilities, best first), one list per image in order; a "
             'text model\'s heads take JSON {"texts": [...]} instead, and the answer lists truncated texts.',
             form=CLASSIFY_FIELDS, request=texts.ClassifyTexts, response=schemas.ClassifyResponse,
             errors=(400, 401, 404, 413, 429, 503),
             access="api", guarded=True),
    Endpoint("POST", "/embed", embed,
             "One embedding per image (a text model: per text, sent as JSON {\"texts\": [...]}), in order; "
             "L2-normalised unless normalize=false; as JSON numbers, base64, "
             "raw bytes or .npy (encoding), float32 or float16 (dtype).",
             form=EMBED_FIELDS, request=texts.EmbedTexts, response=schemas.EmbedResponse,
             errors=(400, 401, 404, 413, 429, 503),
             access="api", guarded=True),
    Endpoint("GET", "/models", list_models,
             "The served models: task, label count, embedding dim, version, execution provider, heads.",
             response=schemas.ModelsResponse, errors=(401,), access="api"),
    Endpoint("GET", "/docs", docs_page, "This page: every route with its fields, responses and errors."),
    Endpoint("GET", "/", docs_page, "The same page as /docs."),
    Endpoint("GET", "/openapi.json", openapi, "The OpenAPI 3 description of every route."),
    Endpoint("GET", "/docs.json", openapi, "The same as /openapi.json (the path BentoML used)."),
    *head_routes.ENDPOINTS,
    *v2.ENDPOINTS,
    *openai_api.ENDPOINTS,
)

BENTOML_ROUTES = {
    "/livez": "200 while the process is alive.",
    "/readyz": "200 once every model is loaded and warmed; 503 before, and while shutting down.",
    "/healthz": "BentoML's alias of /livez.",
    "/schema.json": "The endpoints BentoML's clients (bentoml.SyncHTTPClient, AsyncHTTPClient) call: classify and "
                    "embed, answering as /classify and /embed do.",
    "/metrics": "Prometheus metrics: graft_stage_duration_seconds, graft_batch_size, graft_queue_depth, "
                "graft_shed_images, and BentoML's request metrics.",
}


async def not_found(request: Request) -> Response:
    """Every path and method the table does not serve: 405 for a known path, else 404."""
    path = request.url.path
    methods = sorted({
        method for route in request.app.routes if route.path != CATCH_ALL
        and route.matches(request.scope)[0] == Match.PARTIAL for method in route.methods - {"HEAD"}
    })
    if methods:
        raise MethodNotAllowed(expected=f"{' or '.join(methods)} on {path.rstrip('/') or '/'}", got=request.method,
                               headers={"Allow": ", ".join(methods)})
    routes = [f"{e.method} {e.path}" for e in ENDPOINTS if not e.path.startswith("/v2")]
    routes += [f"GET {path}" for path in BENTOML_ROUTES] + ["the Open Inference Protocol under /v2"]
    raise NotFound(expected=f"one of {', '.join(routes)}", got=f"{request.method} {request.url.path}")


async def service_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, ServiceError):  # Starlette's HTTPException: a body it could not parse
        error = BadRequest(expected="a well-formed request", got=str(getattr(error, "detail", error)))
    error.log(request.method, request.url.path)
    return error.response()


async def client_gone(request: Request, error: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it; uvicorn drops it


async def server_fault(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse(
        {"error": "internal server error; the server log has the details", "expected": None, "got": None},
        status_code=500,
    )


CATCH_ALL = "/{path:path}"


def _paths(endpoint: Endpoint) -> set[str]:
    """The endpoint's path and its trailing-slash twin: the same route (Starlette would answer 307
    and make clients re-send)."""
    return {endpoint.path, endpoint.path.rstrip("/") + "/"}


def guarded_paths(also: Iterable[str] = ()) -> Callable[[str], bool]:
    """Whether a path belongs to a guarded endpoint (or is one of `also`): a set lookup for fixed
    paths, a pattern only for templated ones (`/v2/models/{model}/infer`)."""
    fixed, patterns = set(also), []
    for endpoint in ENDPOINTS:
        if not endpoint.guarded:
            continue
        for path in _paths(endpoint):
            if "{" in path:
                patterns.append(Route(path, endpoint.handler).path_regex)
            else:
                fixed.add(path)
    return lambda path: path in fixed or any(pattern.match(path) for pattern in patterns)


def check_access(access: str, request: Request) -> None:
    """Refuse `request` unless it meets `access` (an `Endpoint.access`): the admin token, an API key."""
    auth = service().auth
    if access == "admin":
        auth.require_admin(request.headers.get("authorization"))
    elif access == "api":
        auth.require_api_key(request.headers.get("authorization"), request.headers.get("x-api-key"))


def _checking_access(endpoint: Endpoint) -> Handler:
    """`endpoint`'s handler behind its access rule: the admin token, an API key, or none."""
    if endpoint.access == "public":
        return endpoint.handler

    async def handler(request: Request) -> Response:
        check_access(endpoint.access, request)
        return await endpoint.handler(request)

    return handler


def build_app() -> Starlette:
    """The Starlette app for every graft route, with its exception handlers."""
    routes = []
    for endpoint in ENDPOINTS:
        for path in _paths(endpoint):
            routes.append(Route(path, _checking_access(endpoint), methods=[endpoint.method]))
    routes.append(Route(CATCH_ALL, not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    return Starlette(
        routes=routes,
        exception_handlers={
            ServiceError: service_error, HTTPException: service_error, ClientGone: client_gone,
            ClientDisconnect: client_gone, Exception: server_fault,
        },
    )
