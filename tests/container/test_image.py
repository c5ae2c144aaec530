"""The CPU image as ops run it: read-only root filesystem, non-root, the admin token from a mounted
file, heads on a volume shared by two containers; answers equal to the host's; a head that survives
a restart; logs on the container's output; SIGTERM drains."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest

from tests.containers import TOKEN, Container, fit_head, podman, served_within, shared_dir
from tests.e2e.conftest import decoded_images, serve, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.container]

HEADS_IN_CONTAINER = "/var/lib/graft/heads"
IMAGE_BUDGET_BYTES = 600_000_000


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[str]:
    """podman arguments: the heads volume and the admin token as a mounted secret file."""
    root = tmp_path_factory.mktemp("container")
    heads = shared_dir(root / "heads")
    secrets = root / "secrets"
    secrets.mkdir()
    (secrets / "admin-token").write_text(TOKEN + "\n")
    (secrets / "admin-token").chmod(0o644)
    return ["-v", f"{heads}:{HEADS_IN_CONTAINER}", "-v", f"{secrets}:/run/secrets/graft:ro",
            "-e", f"GRAFT_HEADS_DIR={HEADS_IN_CONTAINER}", "-e", "GRAFT_ADMIN_TOKEN_FILE=/run/secrets/graft/admin-token",
            "-e", "GRAFT_HEADS_POLL_MS=500"]


def run_container(image, name, volumes) -> Container:
    # As ops run it: nothing writable but /tmp and the volumes.
    container = Container(image, name, ["--read-only", "--tmpfs", "/tmp", *volumes])
    container.start()
    return container


@pytest.fixture(scope="module")
def replica_a(cpu_image, volumes):
    container = run_container(cpu_image, "graft-test-a", volumes)
    yield container
    container.remove()


@pytest.fixture(scope="module")
def replica_b(cpu_image, volumes):
    container = run_container(cpu_image, "graft-test-b", volumes)
    yield container
    container.remove()


@pytest.fixture(scope="module")
def host(lite0_classifier, tmp_path_factory):
    """The same artifact served on the host by `graft serve`."""
    server = serve([lite0_classifier], tmp_path_factory.mktemp("host") / "server.log")
    server.start()
    yield server
    server.stop()


def test_image_is_small_non_root_and_without_torch(cpu_image):
    info = json.loads(podman("image", "inspect", cpu_image).stdout)[0]
    assert info["Size"] < IMAGE_BUDGET_BYTES, f"{info['Size'] / 1e6:.0f} MB"
    assert info["Config"]["User"] == "bentoml"
    probe = podman("run", "--rm", "--entrypoint", "python", cpu_image, "-c",
                   "import importlib.util as u, os; print(os.getuid(), [m for m in ('torch', 'scipy', 'onnxruntime') if u.find_spec(m)])")
    assert probe.stdout.split(None, 1) == ["1034", "['onnxruntime']\n"], probe.stdout + probe.stderr


def test_container_answers_as_the_host(replica_a, host, photo_jpegs):
    files = upload(*photo_jpegs.values())
    assert httpx.get(replica_a.url + "/livez", timeout=10).status_code == 200
    for route in ("/classify", "/embed"):
        theirs = httpx.post(replica_a.url + route, files=files, timeout=60)
        ours = httpx.post(host.url + route, files=files, timeout=60)
        assert theirs.status_code == ours.status_code == 200, theirs.text
        if route == "/classify":
            for got, expected in zip(theirs.json()["predictions"], ours.json()["predictions"]):
                assert [p["index"] for p in got] == [p["index"] for p in expected]
                np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected], atol=1e-5)
        else:
            np.testing.assert_allclose(theirs.json()["embeddings"], ours.json()["embeddings"], atol=1e-5)
    metrics = httpx.get(replica_a.url + "/metrics", timeout=10).text
    assert "graft_stage_duration_seconds" in metrics


def test_logs_reach_the_container_output(replica_a):
    bad = httpx.post(replica_a.url + "/classify", files=upload(b"not an image"), timeout=30)
    assert bad.status_code == 400
    logs = replica_a.logs()
    assert "ready: 1 model(s) warmed" in logs
    assert "400 POST /classify: images[0]: expected an image file" in logs
    assert TOKEN not in logs


def test_a_head_reaches_the_other_replica_and_survives_a_restart(replica_a, replica_b, photo_jpegs):
    photo = photo_jpegs["chelsea"]
    fit_head(replica_a, "cat-or-cup")
    served_within(replica_b, "cat-or-cup", photo, present=True)
    top = httpx.post(replica_b.url + "/classify", files=upload(photo), data={"model": "cat-or-cup"}, timeout=30)
    assert top.json()["predictions"][0][0]["label"] == "cat"

    podman("restart", "-t", "30", replica_a.name)
    replica_a.wait_ready()
    assert httpx.post(replica_a.url + "/classify", files=upload(photo), data={"model": "cat-or-cup"},
                      timeout=30).status_code == 200

    deleted = httpx.delete(replica_b.url + "/heads/cat-or-cup", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert deleted.status_code == 200, deleted.text
    served_within(replica_a, "cat-or-cup", photo, present=False)


def test_sigterm_finishes_the_request_in_flight(replica_a, photo_jpegs):
    """Last in this module: `podman stop` ends the container."""
    answers: list[httpx.Response] = []
    body = upload(*[photo_jpegs["astronaut"]] * 32)
    sender = threading.Thread(target=lambda: answers.append(httpx.post(replica_a.url + "/classify", files=body, timeout=60)))
    sender.start()
    started = time.monotonic()
    while decoded_images(replica_a.url) == 0:  # SIGTERM once the request is being worked on
        assert time.monotonic() - started < 30, "the request never reached the container"
        time.sleep(0.005)
    stopping = time.monotonic()
    podman("stop", "-t", "30", replica_a.name)
    stopped_in = time.monotonic() - stopping
    sender.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert len(answers[0].json()["predictions"]) == 32
    assert stopped_in < 30, f"podman stop took {stopped_in:.1f}s: killed at the grace period, not drained"
