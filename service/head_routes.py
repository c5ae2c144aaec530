"""`POST /heads`, `GET /heads`, `GET|DELETE /heads/{name}`: transfer learning inside the service.

A fit embeds the labelled images with the served backbone through the same batcher as every other
request, fits a softmax regression in a worker thread (`graft.artifact.head_fit`, the fit
`graft train` uses too), writes the head atomically under `GRAFT_HEADS_DIR` and serves it at once.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from graft import __version__
from graft.artifact.head_fit import HeadFitError, fit_head
from graft.artifact.heads import NAME_PATTERN, Provenance, make_head, now
from graft.service import schemas, texts
from graft.service.endpoint import Endpoint, service, watched
from graft.service.engine import Engine
from graft.service.errors import BadRequest, NotFound
from graft.service.forms import Field, boolean, read_form, text
from graft.service.responses import JSONResponse

FIT_FIELDS = {
    "name": Field(text, "", f"the head's name: {NAME_PATTERN}, not a served model's name"),
    "labels": Field(text, None, "one label per image, in the same order as the images", repeated=True),
    "backbone": Field(text, "", "the served model whose embedding the head reads; empty for the default model"),
    "overwrite": Field(boolean, False, "true or false: replace an existing head of that name"),
}


async def create_head(request: Request) -> Response:
    """A head from a form of labelled images, or (text models) a JSON body of labelled texts."""
    graft = service()
    config = graft.config
    if texts.is_json(request):
        body = await texts.read_texts(request, texts.FitTexts)

        async def embed_texts(engine: Engine) -> list[dict]:
            return (await graft.run_texts(engine, body.texts, max_texts=config.max_fit_images, truncate=body.truncate,
                                          budget_per_chunk=True))[0]

        return await _fit(request, body.name, body.labels, len(body.texts), "text", backbone=body.backbone,
                          overwrite=body.overwrite, embed=embed_texts)
    form = await read_form(request, FIT_FIELDS, max_images=config.max_fit_images)

    def embed_images(engine: Engine) -> Awaitable[list[dict]]:
        return graft.run_images(engine, form.images, max_images=config.max_fit_images, budget_per_chunk=True)

    return await _fit(request, form.options["name"], form.options["labels"], len(form.images), "image",
                      backbone=form.options["backbone"], overwrite=form.options["overwrite"], embed=embed_images)


async def _fit(
    request: Request, name: str, labels: list[str], count: int, item: str, *, backbone: str, overwrite: bool,
    embed: Callable[[Engine], Awaitable[list[dict]]],
) -> Response:
    """Fit head `name` on `count` labelled items (`item`: image or text) that `embed` puts through
    the backbone, write it and serve it."""
    graft = service()
    config = graft.config
    if not name:
        raise BadRequest(expected=f"a field 'name' matching {NAME_PATTERN}", got="none")
    if len(labels) != count:
        raise BadRequest(expected=f"one 'labels' value per {item}, in the same order",
                         got=f"{len(labels)} labels for {count} {item}s")
    if len(set(labels)) > config.max_classes:
        raise BadRequest(expected=f"at most {config.max_classes} classes", got=str(len(set(labels))))
    backbone = backbone or graft.default_model
    if backbone not in graft.engines:  # heads are no backbones: they are not offered
        raise NotFound(expected=f"backbone to be one of the served models {sorted(graft.engines)}", got=repr(backbone))
    target = graft.target(backbone)
    engine = target.engine
    graft.heads.check_put(name, engine.name, overwrite=overwrite)  # the store reserves served models' names
    results = await watched(request, embed(engine), engine.name)
    embeddings = target.outputs(results, ("embedding",))["embedding"]
    loop = asyncio.get_running_loop()
    try:
        fit = await loop.run_in_executor(None, fit_head, embeddings, labels)
    except HeadFitError as error:
        raise BadRequest(expected=error.expected, got=error.got) from None
    head = make_head(
        name, fit.classes, weight=fit.head.weights, bias=fit.head.bias, mean=fit.head.mean, scale=fit.head.scale,
        backbone=engine.manifest,
        provenance=Provenance(
            source="api", num_images=len(labels), images_per_class=fit.images_per_class,
            accuracy=fit.accuracy_estimate, accuracy_method=fit.estimate_method, created_at=now(),
            graft_version=__version__,
        ),
    )
    await loop.run_in_executor(None, lambda: graft.heads.put(head, engine.name, overwrite=overwrite))
    return JSONResponse({
        "name": name, "backbone": engine.name, "labels": list(fit.classes), "num_images": len(labels),
        "images_per_class": fit.images_per_class, "accuracy_estimate": fit.accuracy_estimate,
        "accuracy_method": fit.estimate_method, "fit_seconds": round(fit.seconds, 3), "version": head.spec.version,
    }, status_code=201)


async def list_heads(request: Request) -> Response:
    heads = service().heads
    return JSONResponse({"heads": [heads.summary(name) for name, _ in heads.items()]})


async def show_head(request: Request) -> Response:
    return JSONResponse(service().heads.summary(request.path_params["name"]))


async def delete_head(request: Request) -> Response:
    name = request.path_params["name"]
    await asyncio.get_running_loop().run_in_executor(None, service().heads.delete, name)
    return JSONResponse({"deleted": name})


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/heads", create_head,
             "Fit a head (softmax regression on the backbone's embedding) from labelled images (a form) or, for "
             'a text model, labelled texts (JSON {"name", "texts", "labels", "backbone"}) and serve it at once as '
             "a model for /classify; needs the admin token.",
             form=FIT_FIELDS, request=texts.FitTexts, response=schemas.HeadFitResponse, status=201,
             errors=(400, 401, 403, 404, 409, 413, 429, 501, 503),
             access="admin", guarded=True),
    Endpoint("GET", "/heads", list_heads, "The served heads with their backbone, labels and provenance.",
             response=schemas.HeadsResponse, errors=(401,), access="api"),
    Endpoint("GET", "/heads/{name}", show_head, "One head: backbone, labels, provenance, accuracy estimate.",
             response=schemas.HeadSummary, errors=(401, 404), access="api"),
    Endpoint("DELETE", "/heads/{name}", delete_head, "Stop serving a head and remove it from disk; needs the admin token.",
             response=schemas.DeletedResponse, errors=(401, 403, 404, 409), access="admin"),
)
