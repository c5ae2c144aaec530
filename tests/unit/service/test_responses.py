"""graft's JSON answers: numpy arrays written as numbers that read back to the same float32."""

import json

import numpy as np

from graft.service.responses import JSONResponse, dumps


def test_float32_arrays_read_back_exactly():
    vectors = np.random.default_rng(0).standard_normal((3, 1280)).astype(np.float32)
    document = json.loads(dumps({"embeddings": vectors, "dim": np.int64(1280)}))
    assert document["dim"] == 1280
    assert np.array_equal(np.asarray(document["embeddings"], dtype=np.float32), vectors)


def test_the_response_is_compact_utf8_json():
    response = JSONResponse({"label": "café", "scores": np.array([0.5, 0.25], dtype=np.float32)}, status_code=201)
    assert response.body == '{"label":"café","scores":[0.5,0.25]}'.encode()
    assert response.status_code == 201 and response.media_type == "application/json"
