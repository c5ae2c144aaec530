"""`/embed`'s compact encodings in-process: base64, raw bytes and .npy, float32 or float16, each the
same vectors as the JSON default."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from graft.service import schemas
from tests.synthetic import EMBEDDING_DIM, NAME
from tests.unit.service.conftest import jpeg_bytes


@pytest.fixture(scope="module")
def image_files(pictures):
    return [("images", (f"{name}.jpg", jpeg_bytes(image), "image/jpeg")) for name, image in pictures.items()]


@pytest.fixture(scope="module")
def reference(client, image_files) -> np.ndarray:
    """The JSON default's vectors, float32 as computed."""
    body = client.post("/embed", files=image_files[:4]).json()
    return np.asarray(body["embeddings"], dtype=np.float32)


def embed(client, files, **options):
    response = client.post("/embed", files=files, data=options)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_base64_rows_are_little_endian_vectors(client, image_files, reference, dtype):
    body = embed(client, image_files[:4], encoding="base64", dtype=dtype).json()
    schemas.EmbedResponse.model_validate(body)
    assert (body["encoding"], body["dtype"], body["dim"], body["normalized"]) == ("base64", dtype, EMBEDDING_DIM, True)
    vectors = np.stack([np.frombuffer(base64.b64decode(row), dtype=np.dtype(dtype).newbyteorder("<"))
                        for row in body["embeddings"]])
    np.testing.assert_array_equal(vectors, reference.astype(dtype))


@pytest.mark.parametrize("encoding", ["binary", "npy"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_raw_arrays_carry_their_shape_and_dtype(client, image_files, reference, encoding, dtype):
    response = embed(client, image_files[:4], encoding=encoding, dtype=dtype)
    headers = response.headers
    assert (headers["graft-model"], headers["graft-shape"], headers["graft-dtype"], headers["graft-normalized"]) == (
        NAME, f"4,{EMBEDDING_DIM}", dtype, "true")
    if encoding == "binary":
        assert headers["content-type"] == "application/octet-stream"
        array = np.frombuffer(response.content, dtype=np.dtype(dtype).newbyteorder("<")).reshape(4, EMBEDDING_DIM)
    else:
        assert headers["content-type"] == "application/x-npy"
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.dtype == np.dtype(dtype) and len(response.content) < 4 * EMBEDDING_DIM * array.itemsize + 200
    np.testing.assert_array_equal(array, reference.astype(dtype))


def test_float16_loses_little(client, image_files):
    """Unit vectors in half precision: each float within float16's rounding of the float32 one, so
    cosine similarities between images move by far less than they differ."""
    full = np.frombuffer(embed(client, image_files, encoding="binary").content, "<f4").reshape(-1, EMBEDDING_DIM)
    half = np.frombuffer(embed(client, image_files, encoding="binary", dtype="float16").content, "<f2").reshape(-1, EMBEDDING_DIM)
    assert np.abs(half - full).max() <= 2 ** -11 * np.abs(full).max()
    np.testing.assert_allclose(half.astype(np.float32) @ half.T.astype(np.float32), full @ full.T, atol=1e-3)


def test_raw_vectors_unnormalised(client, image_files):
    response = embed(client, image_files[:1], encoding="npy", normalize="false")
    array = np.load(io.BytesIO(response.content))
    assert response.headers["graft-normalized"] == "false" and np.linalg.norm(array) > 1.5


@pytest.mark.parametrize("options, fragment", [
    ({"dtype": "float16"}, "dtype: expected float32 with encoding=json"),
    ({"encoding": "xml"}, "encoding: expected one of json, base64, binary, npy, got 'xml'"),
    ({"encoding": "base64", "dtype": "float64"}, "dtype: expected one of float32, float16, got 'float64'"),
])
def test_bad_encodings_are_refused_naming_the_choices(client, image_files, options, fragment):
    response = client.post("/embed", files=image_files[:1], data=options)
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
