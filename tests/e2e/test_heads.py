"""Heads through the API of a real `graft serve`: fit from labelled Fashion-MNIST images, classify at
once, inspect, survive a restart, delete; the admin token; malformed fits leave nothing on disk and
the server serving."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from graft.artifact.heads import HEAD_FILE
from graft.models.data import fashion_mnist
from tests.e2e.conftest import EMBEDDER, serve, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DEFAULT = "tf_efficientnet_lite0"
CLASSES = ("Trouser", "Bag", "Ankle boot")
FIT_PER_CLASS, HELD_OUT_PER_CLASS = 10, 8
PER_REQUEST = 8  # the e2e server's GRAFT_MAX_IMAGES
NAME = "fmnist3"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images():
    """(fit, held-out) lists of (PNG bytes, label): distinct Fashion-MNIST test images of 3 classes."""
    data = fashion_mnist("t10k")
    rng = np.random.default_rng(0)
    fit, held_out = [], []
    for label in CLASSES:
        members = rng.permutation(np.flatnonzero(data.targets == data.labels.index(label)))
        chosen = [(png_bytes(data.image(int(i))), label) for i in members[: FIT_PER_CLASS + HELD_OUT_PER_CLASS]]
        fit += chosen[:FIT_PER_CLASS]
        held_out += chosen[FIT_PER_CLASS:]
    return fit, held_out


def admin(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def fit_request(server, name, samples, *, headers=None, **fields):
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(samples)]
    data = {"name": name, "labels": [label for _, label in samples], **fields}
    return httpx.post(server.url + "/heads", files=files, data=data,
                      headers=admin(server) if headers is None else headers, timeout=120)


def classify(server, model, samples) -> list[str]:
    """The top-1 label of each sample, PER_REQUEST images per request."""
    labels = []
    for start in range(0, len(samples), PER_REQUEST):
        chunk = samples[start : start + PER_REQUEST]
        files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)]
        response = httpx.post(server.url + "/classify", files=files, data={"model": model, "top_k": "1"}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        labels += [top[0]["label"] for top in response.json()["predictions"]]
    return labels


def accuracy(predicted, samples) -> float:
    return float(np.mean([p == label for p, (_, label) in zip(predicted, samples)]))


def finished_heads_only(heads_dir) -> list[str]:
    """The heads directory's entries, checked to be finished heads (no temp dirs, nothing else)."""
    entries = sorted(heads_dir.iterdir()) if heads_dir.exists() else []
    for entry in entries:
        assert not entry.name.startswith(".") and (entry / HEAD_FILE).is_file(), f"left on disk: {entry}"
    return [entry.name for entry in entries]


@pytest.fixture(scope="module")
def fitted(heads_server, images):
    fit, _ = images
    response = fit_request(heads_server, NAME, fit, overwrite="true")
    assert response.status_code == 201, response.text
    return response.json()


def test_fit_response(fitted):
    assert fitted["name"] == NAME and fitted["backbone"] == DEFAULT
    assert sorted(fitted["labels"]) == sorted(CLASSES)
    assert fitted["num_images"] == len(CLASSES) * FIT_PER_CLASS
    assert fitted["images_per_class"] == {label: FIT_PER_CLASS for label in CLASSES}
    assert 0.0 <= fitted["accuracy_estimate"] <= 1.0 and "cross-validation" in fitted["accuracy_method"]
    assert fitted["fit_seconds"] > 0 and isinstance(fitted["version"], str) and fitted["version"]


def test_head_routes_answer_as_documented(heads_server, fitted):
    """The fit's 201 and the head listings' bodies are what /openapi.json says."""
    from graft.service import schemas

    spec = httpx.get(heads_server.url + "/openapi.json", timeout=10).json()
    fit_responses = spec["paths"]["/heads"]["post"]["responses"]
    assert "201" in fit_responses and "200" not in fit_responses and "501" in fit_responses
    schemas.HeadFitResponse.model_validate(fitted)
    schemas.HeadsResponse.model_validate(httpx.get(heads_server.url + "/heads", timeout=10).json())
    schemas.HeadSummary.model_validate(httpx.get(f"{heads_server.url}/heads/{NAME}", timeout=10).json())
    assert spec["paths"]["/heads/{name}"]["delete"]["responses"]["200"]["content"]


def test_classify_with_the_new_head_at_once(heads_server, fitted, images):
    _, held_out = images
    predicted = classify(heads_server, NAME, held_out)
    assert set(predicted) <= set(CLASSES)
    assert accuracy(predicted, held_out) > 0.6, predicted


def test_several_heads_in_one_request_equal_one_head_each(heads_server, fitted, images):
    fit, held_out = images
    other = "fmnist3-swapped"
    # A different head on the same backbone: the same images, labels in another vocabulary.
    response = fit_request(heads_server, other, [(data, label.upper()) for data, label in fit], overwrite="true")
    assert response.status_code == 201, response.text
    chunk = held_out[:PER_REQUEST]
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)]
    both = httpx.post(heads_server.url + "/classify", files=files, data={"model": f"{NAME},{other}", "top_k": "2"},
                      timeout=60)
    assert both.status_code == 200, both.text
    results = both.json()["models"]
    assert list(results) == [NAME, other]
    for name in (NAME, other):
        alone = httpx.post(heads_server.url + "/classify", files=files, data={"model": name, "top_k": "2"}, timeout=60)
        assert results[name] == alone.json()
    mixed = httpx.post(heads_server.url + "/classify", files=files, data={"model": f"{NAME},{EMBEDDER}"}, timeout=60)
    assert mixed.status_code == 400 and "classifier" in mixed.json()["error"]
    assert httpx.delete(f"{heads_server.url}/heads/{other}", headers=admin(heads_server), timeout=30).status_code == 200


def test_models_and_heads_list_it_under_its_backbone(heads_server, fitted):
    models = httpx.get(heads_server.url + "/models", timeout=10).json()["models"]
    backbone = next(model for model in models if model["name"] == DEFAULT)
    assert NAME in [head["name"] if isinstance(head, dict) else head for head in backbone["heads"]]
    listed = httpx.get(heads_server.url + "/heads", headers=admin(heads_server), timeout=10)
    assert listed.status_code == 200 and NAME in [head["name"] for head in listed.json()["heads"]]


def test_head_summary_shows_provenance(heads_server, fitted):
    response = httpx.get(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["name"] == NAME and summary["backbone"] == DEFAULT and summary["source"] == "api"
    assert summary["num_images"] == fitted["num_images"] and summary["version"] == fitted["version"]
    assert summary["accuracy_estimate"] == pytest.approx(fitted["accuracy_estimate"])
    assert sorted(summary["labels"]) == sorted(CLASSES) and summary["created_at"]


def test_admin_token_is_required(heads_server, images):
    fit, _ = images
    before = finished_heads_only(heads_server.heads_dir)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": heads_server.token}):
        response = fit_request(heads_server, "unauthorised", fit[:6], headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert heads_server.token not in response.text
        deleted = httpx.delete(f"{heads_server.url}/heads/{NAME}", headers=headers, timeout=10)
        assert deleted.status_code == 401, deleted.text
    assert finished_heads_only(heads_server.heads_dir) == before


MALFORMED = ("labels fewer than images", "one class only", "a class with a single image",
             "existing name without overwrite", "unknown backbone", "corrupt image",
             "name escaping the directory", "name with a slash")


def malformed(fit) -> dict[str, tuple[int, dict]]:
    """Case name -> (expected status, request fields with `samples` and optionally `labels`)."""
    two_per_class = [sample for label in CLASSES for sample in [s for s in fit if s[1] == label][:2]]
    bag = [s for s in fit if s[1] == "Bag"]
    return {
        "labels fewer than images": (400, dict(name="bad-count", samples=two_per_class,
                                               labels=[label for _, label in two_per_class][:-1])),
        "one class only": (400, dict(name="bad-one-class", samples=bag[:4])),
        "a class with a single image": (400, dict(name="bad-single", samples=bag[:3] + [fit[0]])),
        "existing name without overwrite": (409, dict(name=NAME, samples=two_per_class)),
        "unknown backbone": (404, dict(name="bad-backbone", samples=two_per_class, backbone="resnet50")),
        "corrupt image": (400, dict(name="bad-image", samples=[(b"not an image at all", "Bag"), *two_per_class])),
        "name escaping the directory": (400, dict(name="../escaped", samples=two_per_class)),
        "name with a slash": (400, dict(name="a/b", samples=two_per_class)),
    }


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_fits_are_refused_and_leave_nothing(heads_server, fitted, images, case):
    fit, held_out = images
    status, request = malformed(fit)[case]
    samples = request.pop("samples")
    labels = request.pop("labels", None)
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(samples)]
    data = {"labels": labels if labels is not None else [label for _, label in samples], **request}
    response = httpx.post(heads_server.url + "/heads", files=files, data=data, headers=admin(heads_server), timeout=120)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and "expected" in body
    if case == "unknown backbone":  # named a backbone, and heads are not offered as backbones
        assert "backbone to be one of the served models" in body["error"] and NAME not in body["error"]
    assert finished_heads_only(heads_server.heads_dir) == [NAME]
    assert not (heads_server.heads_dir.parent / "escaped").exists()
    head = httpx.get(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10).json()
    assert head["version"] == fitted["version"]  # a refused fit never touches the head already there
    assert len(classify(heads_server, NAME, held_out[:2])) == 2  # still serving


def test_restart_keeps_serving_the_head(heads_server, fitted, images):
    _, held_out = images
    before = classify(heads_server, NAME, held_out)
    heads_server.restart()
    assert classify(heads_server, NAME, held_out) == before
    summary = httpx.get(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10).json()
    assert summary["version"] == fitted["version"]


def test_replace_then_delete(heads_server, fitted, images):
    fit, held_out = images
    replaced = fit_request(heads_server, NAME, fit[::2] + fit[1::2][:3], overwrite="true")
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["version"] != fitted["version"]
    response = httpx.delete(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10)
    assert response.status_code == 200 and response.json() == {"deleted": NAME}
    assert httpx.get(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10).status_code == 404
    files = [("images", ("0.png", held_out[0][0], "image/png"))]
    gone = httpx.post(heads_server.url + "/classify", files=files, data={"model": NAME}, timeout=30)
    assert gone.status_code == 404, gone.text
    again = httpx.delete(f"{heads_server.url}/heads/{NAME}", headers=admin(heads_server), timeout=10)
    assert again.status_code == 404
    assert finished_heads_only(heads_server.heads_dir) == []


def consistently(server, name, photo, status: int, *, within_s: float = 5, in_a_row: int = 20) -> None:
    """`in_a_row` requests for `name` in a row answer `status` within `within_s`; each request is a
    new connection, so the workers take turns."""
    started, streak = time.monotonic(), 0
    while streak < in_a_row:
        assert time.monotonic() - started < within_s, f"{name}: not {status} on every worker within {within_s}s"
        answer = httpx.post(server.url + "/classify", files=upload(photo), data={"model": name}, timeout=30)
        assert answer.status_code in (200, 404), answer.text
        streak = streak + 1 if answer.status_code == status else 0


def test_every_worker_serves_a_head_fitted_replaced_or_deleted_through_one(lite0_classifier, tmp_path, images):
    fit, held_out = images
    server = serve([lite0_classifier], tmp_path / "server.log", GRAFT_WORKERS="2", GRAFT_ADMIN_TOKEN="workers-token",
                   GRAFT_HEADS_DIR=str(tmp_path / "heads"), GRAFT_HEADS_POLL_MS="500")
    server.token = "workers-token"
    server.start()
    try:
        ready_in_a_row, started = 0, time.monotonic()
        while ready_in_a_row < 20:  # both workers warmed (start() saw one of them ready)
            assert time.monotonic() - started < 60, "the second worker never got ready"
            ready = httpx.get(server.url + "/readyz", timeout=10).status_code == 200
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
        photo = held_out[0][0]
        assert fit_request(server, "workers", fit).status_code == 201
        consistently(server, "workers", photo, 200)
        assert fit_request(server, "workers", fit[::-1], overwrite="true").status_code == 201
        consistently(server, "workers", photo, 200)
        assert httpx.delete(server.url + "/heads/workers", headers=admin(server), timeout=30).status_code == 200
        consistently(server, "workers", photo, 404)
    finally:
        server.stop()
