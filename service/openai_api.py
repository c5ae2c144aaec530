"""OpenAI's embeddings API for images and texts: `POST /v1/embeddings`, `GET /v1/models[/{model}]`.

Pipelines written against OpenAI's embeddings API (its official clients, LangChain, LlamaIndex,
vector-database loaders) embed images unchanged: each `input` string is an encoded image, as a
`data:image/...;base64,...` URI or bare base64. The same targets, batcher, limits, auth and
`/embed`'s L2-normalised embeddings do the work; only the request and response shapes differ.

Choices where OpenAI's text API does not carry over:
- A URL is refused: the server never fetches what a client names.
- `dimensions` is accepted only as the model's own embedding size: truncating a CNN's pooled
  features (unlike a Matryoshka-trained text model's) leaves no meaningful smaller embedding.
- `usage` counts no tokens for images (they are not tokenised); a text model's `input` strings are
  texts, as in OpenAI's API, and `usage` counts their tokens.
- Errors on `/v1` have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, whatever
  raised them (the route, auth, the guard's 413 and 429, an unknown path): `OpenAIErrors` reshapes
  graft's error bodies there, so every other route keeps graft's shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from graft.service.embeddings import base64_rows, embed_images, vectors_of
from graft.service.endpoint import Endpoint, service, watched
from graft.service.engine import Engine, Target
from graft.service.errors import BadRequest, NotFound
from graft.service.responses import JSONResponse

PREFIX = "/v1"
IMAGE = "an image as a data:image/...;base64 URI or bare base64 (graft embeds images, not text)"
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
# `base64 FILE` wraps its output every 76 characters; spaces stay invalid, so text is told apart.
_LINE_BREAKS = str.maketrans("", "", "\r\n")


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class EmbeddingsRequest(BaseModel):
    """OpenAI's request body; unknown fields are refused, as OpenAI's API does."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[list[StrictStr], BeforeValidator(_one_or_many)] = Field(
        description="one image or a list: each a data:image/...;base64 URI or bare base64")
    model: StrictStr = Field(description="a served model or head (GET /v1/models); empty for the default model")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded")
    dimensions: StrictInt | None = Field(None, description="only the model's own embedding size is accepted")
    user: StrictStr | None = Field(None, description="accepted and ignored")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(description="the input's position")
    embedding: list[float] | str = Field(description="L2-normalised; a base64 string with encoding_format=base64")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="always 0: images are not tokenised")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding] = Field(description="one per input, in the order sent")
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int = Field(description="when the artifact was exported (Unix seconds)")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


_EXPECTED = {
    "input": "a string or a list of strings, each " + IMAGE,
    "model": "a model name string (GET /v1/models)",
    "encoding_format": "'float' or 'base64'",
    "dimensions": "an integer",
    "user": "a string",
}


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else f"a JSON {names.get(type(value), type(value).__name__)}"


def _invalid(error: ValidationError) -> BadRequest:
    """The body's first mistake, named by its JSON path (`input[2]`), as expected and got."""
    first = error.errors(include_url=False)[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    field = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "json_invalid":
        return BadRequest(expected="a JSON object body", got=f"invalid JSON ({first['msg'].removeprefix('Invalid JSON: ')})")
    if first["type"] == "model_type":
        return BadRequest(expected="a JSON object body", got=_json_type(first["input"]))
    if first["type"] == "extra_forbidden":
        return BadRequest(expected=f"fields {sorted(EmbeddingsRequest.model_fields)}", got=f"a field named {field!r}")
    if first["type"] == "missing":
        return BadRequest(f"{where}: expected {_EXPECTED[field]}, got none", expected=_EXPECTED[field], got="none")
    expected = IMAGE if where.startswith("input[") else _EXPECTED[field]
    got = first["input"]
    shown = repr(got) if isinstance(got, str) and len(got) <= 40 else _json_type(got)
    return BadRequest(f"{where}: expected {expected}, got {shown}", expected=expected, got=f"{where}: {shown}")


def image_bytes(index: int, item: str) -> bytes:
    """The encoded image an `input` string carries: a `data:image/...;base64,` URI or bare base64.

    Raises:
        BadRequest: a URL, a `data:` URI of another type or not base64, text that is not base64,
            or an empty string; named `input[index]`.
    """
    def refuse(expected: str, got: str) -> BadRequest:
        return BadRequest(f"input[{index}]: expected {expected}, got {got}", expected=expected,
                          got=f"input[{index}]: {got}")

    if _URL.match(item):
        raise refuse(f"{IMAGE}; the server never fetches URLs", f"the URL {item[:80]!r}")
    payload = item
    if item[:5].lower() == "data:":
        header, comma, payload = item.partition(",")
        media, *parameters = header[5:].split(";")
        if not media.strip().lower().startswith("image/"):
            raise refuse("a data:image/...;base64 URI", f"a data: URI of type {media.strip() or 'text/plain'!r}")
        if not comma or "base64" not in (p.strip().lower() for p in parameters):
            raise refuse("a data:image/...;base64 URI", "a data: URI that is not base64")
    try:
        data = base64.b64decode(payload.translate(_LINE_BREAKS), validate=True)
    except (binascii.Error, ValueError):
        raise refuse(IMAGE, "text that is not base64") from None
    if not data:
        raise refuse(IMAGE, "an empty string")
    return data


async def create_embeddings(request: Request) -> Response:
    arrived = time.monotonic()
    graft = service()
    try:
        body = EmbeddingsRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise _invalid(error) from None
    if not body.input:
        raise BadRequest("input: expected at least one image, got an empty list",
                         expected="at least one image", got="an empty list")
    target = graft.target(body.model)
    dim = target.engine.manifest.embedding_dim
    if body.dimensions is not None and body.dimensions != dim:
        raise BadRequest(f"dimensions: expected {dim} (model {target.name!r}'s embedding size; graft does "
                         f"not shorten embeddings) or none, got {body.dimensions}",
                         expected=f"{dim} or none", got=str(body.dimensions))
    tokens = 0
    if target.engine.text is not None:  # strings are texts, as in OpenAI's own API
        vectors, tokens = await _embed_texts(request, target, body.input, arrived)
    else:
        images = [image_bytes(index, item) for index, item in enumerate(body.input)]
        vectors = await embed_images(request, target, images, normalize=True, arrived=arrived, field="input")
    rows = base64_rows(vectors, "float32") if body.encoding_format == "base64" else list(vectors)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": row} for index, row in enumerate(rows)],
        "model": target.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


async def _embed_texts(request: Request, target: Target, texts: list[str], arrived: float) -> tuple[np.ndarray, int]:
    """A text model's L2-normalised embeddings of `texts` and their token count. A text over the
    model's token limit is refused (400), as OpenAI's API refuses one over its context: OpenAI's
    response has no field to say a text was cut."""
    work = service().run_texts(target.engine, texts, arrived=arrived, truncate=False)
    results, encoded = await watched(request, work, target.name)
    return vectors_of(target, results, True), sum(len(encoding.ids) for encoding in encoded)


def _card(engine: Engine) -> dict:
    created = int(datetime.fromisoformat(engine.manifest.created_at).timestamp())
    return {"id": engine.name, "object": "model", "created": created, "owned_by": "graft"}


async def list_models(request: Request) -> Response:
    """The served models: each embeds images (a head's embedding is its backbone's, so heads are
    not listed separately)."""
    return JSONResponse({"object": "list", "data": [_card(engine) for engine in service().engines.values()]})


async def get_model(request: Request) -> Response:
    graft = service()
    name = request.path_params["model"]
    if name not in graft.engines:
        raise NotFound(expected=f"model to be one of {sorted(graft.engines)}", got=repr(name))
    return JSONResponse(_card(graft.engines[name]))


_KINDS = {401: ("invalid_request_error", "invalid_api_key"), 404: ("invalid_request_error", "not_found"),
          413: ("invalid_request_error", "request_too_large"), 429: ("rate_limit_error", "rate_limit_exceeded")}


def openai_error(status: int, message: str) -> dict:
    """OpenAI's error body for an HTTP status."""
    kind, code = _KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class OpenAIErrors:
    """ASGI middleware: graft's JSON error bodies on `/v1` paths, reshaped as OpenAI's.

    It wraps the request guard (added before it), so the guard's 413 and 429 are reshaped too;
    headers (`Retry-After`, `WWW-Authenticate`, `Allow`) are kept.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = b"".join(chunks)
            try:
                content = json.dumps(openai_error(start["status"], json.loads(content)["error"])).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not graft's error body (a 499 nobody reads): sent as it was
            headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": content})

        await self.app(scope, receive, reshaping_send)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/embeddings", create_embeddings,
             "OpenAI's embeddings API for images: a JSON body {input, model, encoding_format, dimensions, user}; "
             "each input a data:image/...;base64 URI or bare base64; errors in OpenAI's shape.",
             request=EmbeddingsRequest, response=EmbeddingsResponse, errors=(400, 401, 404, 413, 429, 503),
             access="api", guarded=True),
    Endpoint("GET", "/v1/models", list_models, "OpenAI's model list: the models /v1/embeddings serves.",
             response=ModelList, errors=(401,), access="api"),
    Endpoint("GET", "/v1/models/{model}", get_model, "OpenAI's model retrieval: one served model.",
             response=ModelCard, errors=(401, 404), access="api"),
)
