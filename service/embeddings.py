"""Embeddings for a request's images, and the compact ways to send them back.

`/embed` and `/v1/embeddings` both get their vectors from `embed_images`, so they agree by
construction. `/embed` answers in one of four encodings (`ENCODINGS`); JSON numbers stay the
default. Every binary form is little-endian, as OpenAI's clients and NumPy on every common CPU
read it:
- `json`: `{"model", "dim", "normalized", "embeddings": [[...], ...]}`;
- `base64`: the same JSON plus `encoding` and `dtype`, each embedding a base64 string of its bytes;
- `binary`: `application/octet-stream`, the [N, D] array's row-major bytes, described by headers;
- `npy`: `application/x-npy`, a NumPy `.npy` file (`np.load(io.BytesIO(body))`), same headers.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from graft.artifact.postprocess import l2_normalize
from graft.artifact.text import truncated_indices
from graft.service.endpoint import service, watched
from graft.service.engine import Target
from graft.service.errors import BadRequest
from graft.service.responses import JSONResponse
from graft.service.texts import EmbedTexts

JSON_ENCODINGS = ("json", "base64")
ENCODINGS = (*JSON_ENCODINGS, "binary", "npy")
DTYPES = ("float32", "float16")


async def embed_images(
    request: Request, target: Target, images: list[bytes], *, normalize: bool, arrived: float,
    timeout_ms: int | None = None, field: str = "images",
) -> np.ndarray:
    """`target`'s float32 [N, D] embeddings of `images`, in order, through its engine's batcher
    (within the latency budget from `arrived`); L2-normalised when `normalize`. A bad image is
    named `field[index]`."""
    work = service().run_images(target.engine, images, arrived=arrived, timeout_ms=timeout_ms, field=field)
    return vectors_of(target, await watched(request, work, target.name), normalize)


def vectors_of(target: Target, results: list[dict], normalize: bool) -> np.ndarray:
    """`target`'s [N, D] embeddings from its engine's per-item results, L2-normalised when `normalize`."""
    vectors = target.outputs(results, ("embedding",))["embedding"]
    return l2_normalize(vectors) if normalize else vectors


async def embed_texts(request: Request, body: EmbedTexts, *, arrived: float) -> tuple[str, np.ndarray, list[int]]:
    """`/embed`'s work for a JSON body of texts: the model's name, its embeddings, and the indices of
    the texts cut to the model's token limit."""
    check_encoding(body.encoding, body.dtype)
    target = service().target(body.model)
    work = service().run_texts(target.engine, body.texts, arrived=arrived, timeout_ms=body.timeout_ms,
                               truncate=body.truncate)
    results, encoded = await watched(request, work, target.name)
    return target.name, vectors_of(target, results, body.normalize), truncated_indices(encoded)


async def embed_request(
    request: Request, images: list[bytes], *, model: str, normalize: bool, encoding: str, dtype: str,
    timeout_ms: int | None, arrived: float,
) -> tuple[str, np.ndarray]:
    """`/embed`'s work for `images`, whichever way they came (a form or a BentoML client): the served
    model's name and its embeddings, after checking the options before any image runs."""
    check_encoding(encoding, dtype)
    target = service().target(model)
    vectors = await embed_images(request, target, images, normalize=normalize, arrived=arrived, timeout_ms=timeout_ms)
    return target.name, vectors


def _little_endian(vectors: np.ndarray, dtype: str) -> np.ndarray:
    return vectors.astype(np.dtype(dtype).newbyteorder("<"), copy=False)


def base64_rows(vectors: np.ndarray, dtype: str) -> list[str]:
    """Each row as base64 of its little-endian `dtype` (float32 or float16) bytes."""
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in _little_endian(vectors, dtype)]


def check_encoding(encoding: str, dtype: str) -> None:
    """Refuse, before any image runs, a dtype the encoding cannot carry: JSON numbers are float32's."""
    if encoding == "json" and dtype != "float32":
        raise BadRequest(f"dtype: expected float32 with encoding=json ({dtype} needs encoding base64, binary or npy), "
                         f"got {dtype}", expected="float32 with encoding=json", got=dtype)


def embeddings_body(
    model: str, vectors: np.ndarray, *, normalized: bool, encoding: str, dtype: str, truncated: list[int] | None = None,
) -> dict:
    """`/embed`'s JSON answer: `vectors` [N, D] as numbers (the array itself, which graft's
    `JSONResponse` writes), or as base64 of `dtype` (`JSON_ENCODINGS`); for texts, `truncated` lists
    those cut to the model's token limit."""
    summary: dict = {"model": model, "dim": int(vectors.shape[1]), "normalized": normalized}
    if truncated is not None:
        summary["truncated"] = truncated
    if encoding == "json":
        return {**summary, "embeddings": vectors}
    return {**summary, "encoding": "base64", "dtype": dtype, "embeddings": base64_rows(vectors, dtype)}


def embeddings_response(
    model: str, vectors: np.ndarray, *, normalized: bool, encoding: str, dtype: str, truncated: list[int] | None = None,
) -> Response:
    """`/embed`'s answer: `vectors` [N, D] in `encoding` (one of `ENCODINGS`) as `dtype`; `truncated`
    (texts) in the JSON, or as the Graft-Truncated header (comma-separated indices)."""
    if encoding in JSON_ENCODINGS:
        return JSONResponse(embeddings_body(model, vectors, normalized=normalized, encoding=encoding, dtype=dtype,
                                            truncated=truncated))
    array = _little_endian(vectors, dtype)
    headers = {"Graft-Model": model, "Graft-Shape": ",".join(map(str, array.shape)), "Graft-Dtype": dtype,
               "Graft-Normalized": str(normalized).lower()}
    if truncated is not None:
        headers["Graft-Truncated"] = ",".join(map(str, truncated))
    if encoding == "binary":
        return Response(array.tobytes(), media_type="application/octet-stream", headers=headers)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    headers["Content-Disposition"] = 'attachment; filename="embeddings.npy"'
    return Response(buffer.getvalue(), media_type="application/x-npy", headers=headers)
