"""`/classify` and `/embed` for BentoML's own clients (`bentoml.SyncHTTPClient`, `AsyncHTTPClient`).

Those clients call only what `/schema.json` lists, the `@bentoml.api` methods, never the mounted
routes. So `Graft` also declares `classify` and `embed` under `ROUTES`; their bodies are the
functions the form routes call (`routes.classify_images`, `embeddings.embed_request`), their options
are checked by the forms' own parsers, and graft's errors keep their status, headers and JSON body.

NOTE: BentoML downloads a text value sent in a file field (a URL) while it parses the form, before
any validator runs, and answers its validators' errors in a shape and log of its own (a traceback
per mistake). `ClientRouteGuard` checks the form first, as the form routes do, so the server never
fetches what a client names and a client's mistake is answered as on `/classify`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

import bentoml
import numpy as np
import pydantic
from starlette.requests import Request

from graft.service import embeddings
from graft.service.endpoint import ClientGone
from graft.service.errors import ServiceError
from graft.service.forms import Field, choice, read_form
from graft.service.routes import CLASSIFY_FIELDS, EMBED_FIELDS, check_access, classify_images

ROUTES = {"classify": "/api/classify", "embed": "/api/embed"}


# The client reads JSON answers only: binary and npy stay on POST /embed.
ENCODING = Field(choice(*embeddings.JSON_ENCODINGS), "json", "json (numbers) or base64 (each embedding a base64 "
                 "string of its little-endian dtype values)")
FIELDS = {"classify": CLASSIFY_FIELDS, "embed": {**EMBED_FIELDS, "encoding": ENCODING}}


def _parser(field: Field) -> Callable[[Any], Any]:
    """`field`'s form parser for a value BentoML decoded from JSON (`3`, `"name"`, `True`)."""
    return lambda value: None if value is None else field.parse(str(value))


def _typed(kind: Any, field: Field) -> Any:
    """An API parameter: its value parsed by the form field's parser (the form is checked with the
    same parser before, by `ClientRouteGuard`, so this never refuses), described as the field is."""
    return Annotated[kind, pydantic.BeforeValidator(_parser(field)), pydantic.Field(description=field.description)]


TopK = _typed(int | None, CLASSIFY_FIELDS["top_k"])  # None: not asked (the default, never `top_k_capped`)
ClassifyModel = _typed(str, CLASSIFY_FIELDS["model"])
Model = _typed(str, EMBED_FIELDS["model"])
Timeout = _typed(int | None, CLASSIFY_FIELDS["timeout_ms"])
Normalize = _typed(bool, EMBED_FIELDS["normalize"])
Encoding = _typed(str, ENCODING)
Dtype = _typed(str, EMBED_FIELDS["dtype"])


async def _answer(ctx: bentoml.Context, work: Awaitable[dict]) -> dict:
    """`work`'s answer; a refusal as the form routes send it (status, headers, graft's JSON body)."""
    try:
        return await work
    except ServiceError as error:
        error.log(ctx.request.method, ctx.request.url.path)
        ctx.response.status_code = error.status
        ctx.response.headers.update(error.headers)
        return error.body()
    except ClientGone:
        ctx.response.status_code = 499  # nobody reads it
        return {}


def _contents(images: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in images]


async def classify(ctx: bentoml.Context, images: list[Path], *, arrived: float, **options: Any) -> dict:
    """`POST /classify`'s answer for the files BentoML saved as `images`."""
    return await _answer(ctx, classify_images(ctx.request, _contents(images), arrived=arrived, **options))


async def embed(ctx: bentoml.Context, images: list[Path], *, arrived: float, **options: Any) -> dict:
    """`POST /embed`'s JSON answer for the files BentoML saved as `images`."""
    async def work() -> dict:
        name, vectors = await embeddings.embed_request(ctx.request, _contents(images), arrived=arrived, **options)
        body = embeddings.embeddings_body(name, vectors, normalized=options["normalize"],
                                          encoding=options["encoding"], dtype=options["dtype"])
        # BentoML encodes this answer itself, and its encoder takes lists, not numpy arrays.
        if isinstance(body["embeddings"], np.ndarray):
            body["embeddings"] = body["embeddings"].tolist()
        return body

    return await _answer(ctx, work())


class ClientRouteGuard:
    """ASGI middleware for `ROUTES`: what the form routes check, checked before BentoML reads the
    form: the API key, then `read_form`'s rules (multipart, file parts named `images` and never text,
    at most `max_images`, known fields, each value through its form field's parser), answered in
    graft's error shape. A form that passes goes on unchanged."""

    def __init__(self, app, *, max_images: int) -> None:
        self.app = app
        self.max_images = max_images
        self.fields = {
            ROUTES[name]: {key: Field(_as_sent(field), None, field.description) for key, field in fields.items()}
            for name, fields in FIELDS.items()
        }

    async def __call__(self, scope, receive, send) -> None:
        fields = self.fields.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if fields is None:
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        if body is None:
            return  # the client left, or the request guard cut the body short (its 413 follows)
        request = Request(scope, _replay(body, receive))
        try:
            check_access("api", request)
            await read_form(request, fields, max_images=self.max_images)
        except ServiceError as error:
            error.log(scope["method"], scope["path"])
            await error.response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _as_sent(field: Field) -> Callable[[str], Any]:
    """`field`'s form parser for a form value as BentoML's client sends it, JSON; like BentoML, text
    that is not JSON is taken as it is."""
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        return _parser(field)(value)

    return parse


async def _body(receive) -> bytes | None:
    """The whole request body, or None if the connection ended first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI `receive` that gives `body` once, then the connection's own messages (a disconnect)."""
    given = False

    async def replayed():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
