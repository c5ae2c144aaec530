"""An INT8 artifact through a real `graft serve`: its precision in /models and /v2 metadata, embeddings
equal to the artifact run directly, and a head fitted on it by `POST /heads` bound to its version."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from graft.artifact.heads import HEAD_FILE
from graft.artifact.image import decode_image
from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.preprocessing import preprocess
from tests.e2e.conftest import serve, started, upload
from tests.e2e.test_heads import accuracy, admin, classify, fit_request, images  # noqa: F401 (images: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "lite0-int8"


@pytest.fixture(scope="module")
def int8_server(lite0_int8_embedder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8-server")
    running = serve([lite0_int8_embedder], folder / "server.log", GRAFT_ADMIN_TOKEN="e2e-admin-token",
                    GRAFT_HEADS_DIR=str(folder / "heads"))
    running.token, running.heads_dir = "e2e-admin-token", folder / "heads"
    with started(running):
        yield running


def test_precision_is_listed_in_models_and_v2_metadata(int8_server, lite0_int8_embedder):
    models = httpx.get(int8_server.url + "/models", timeout=10).json()["models"]
    served = next(model for model in models if model["name"] == MODEL)
    assert served["precision"] == "int8" and served["version"] == read_manifest(lite0_int8_embedder).version
    metadata = httpx.get(f"{int8_server.url}/v2/models/{MODEL}", timeout=10).json()
    assert metadata["parameters"]["precision"] == "int8"


def test_embed_matches_the_int8_artifact_run_directly(int8_server, lite0_int8_embedder, photo_jpegs):
    manifest = read_manifest(lite0_int8_embedder)
    spec = manifest.preprocessing
    batch = np.stack([preprocess(decode_image(p.read_bytes(), min_side=spec.resize_size), spec) for p in photo_jpegs.values()])
    session = ort.InferenceSession(str(lite0_int8_embedder / MODEL_FILE), providers=["CPUExecutionProvider"])
    expected = session.run(["embedding"], {"input": batch})[0]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    response = httpx.post(int8_server.url + "/embed", files=upload(*photo_jpegs.values()), data={"model": MODEL}, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["embeddings"]), expected, atol=1e-4)


def test_a_head_fitted_on_the_int8_backbone_is_bound_to_it_and_classifies(
    int8_server, lite0_int8_embedder, images,  # noqa: F811 (the fixture imported above)
):
    fit, held_out = images
    response = fit_request(int8_server, "fmnist-int8", fit, overwrite="true")
    assert response.status_code == 201, response.text
    assert response.json()["backbone"] == MODEL
    spec = json.loads((int8_server.heads_dir / "fmnist-int8" / HEAD_FILE).read_text())
    assert spec["backbone"]["sha256"] == read_manifest(lite0_int8_embedder).sha256["model"]
    assert accuracy(classify(int8_server, "fmnist-int8", held_out), held_out) > 0.6
    listed = httpx.get(int8_server.url + "/heads", headers=admin(int8_server), timeout=10).json()["heads"]
    assert "fmnist-int8" in [head["name"] for head in listed]


def test_memory_benchmark_loads_the_int8_embedder_on_embed(int8_server, tmp_path):
    # The INT8 default model is an embedder: its memory under load is measured on /embed (it has no
    # /classify), and every request of the load is answered.
    from graft.benchmarks.memory_bench import bench_memory

    result = bench_memory(int8_server.url, int8_server.process.pid, tmp_path, clients=2, seconds=1.5,
                          idle_seconds=0.5, interval=0.25)
    assert result["route"] == "/embed"
    assert not result["errors"] and result["images_per_s"] > 0
    assert any(name.startswith("worker") for name in result["processes"])
    assert result["idle_total_rss"] > 0 and result["peak_total_rss"] > 0
