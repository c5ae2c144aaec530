"""The server's life: a broken artifact stops it at start with one line; SIGTERM drains it; a killed
worker is replaced and serves again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from graft.artifact.manifest import read_manifest, sha256_file
from tests.e2e.conftest import REPO, decoded_images, png, serve, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _serve_refused(model) -> subprocess.CompletedProcess:
    """`graft serve` of `model`, expected to exit at start; its exit status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", "serve", "--model", str(model), "--port", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    return done


def test_a_changed_model_stops_the_server_at_start_with_one_line(lite0_classifier, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lite0_classifier, broken)
    with open(broken / "model.onnx", "ab") as handle:
        handle.write(b"tampered")
    done = _serve_refused(broken)
    # Refused before anything says it is served.
    assert done.stderr.strip().splitlines() == [
        f"graft serve: error: expected model.onnx sha256 {read_manifest(broken).sha256['model']}, "
        f"got {sha256_file(broken / 'model.onnx')}: file changed"
    ], done.stderr[-2000:]
    # `bentoml serve` of the service (a Bento, a container) refuses it in BentoML's main process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    direct = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "graft.service.app:Graft", "--port", "0"],
        cwd=REPO, env={**env, "GRAFT_MODELS": str(broken), "BENTOML_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=120,
    )
    assert direct.returncode != 0
    last = direct.stderr.strip().splitlines()[-1]
    assert last.startswith("graft: cannot serve: expected model.onnx sha256"), direct.stderr[-2000:]


def test_a_broken_manifest_stops_the_server_at_start_with_one_line(lite0_classifier, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lite0_classifier, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["preprocessing"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    done = _serve_refused(broken)
    assert done.stderr.strip().splitlines() == [
        f"graft serve: error: invalid manifest {broken / 'manifest.json'}: expected a preprocessing block for an image "
        "model, got none"
    ], done.stderr[-2000:]


def test_sigterm_finishes_requests_in_flight_then_exits(lite0_classifier, tmp_path):
    server = serve([lite0_classifier], tmp_path / "server.log", GRAFT_MAX_IMAGES="32")
    server.start()
    answers: list[httpx.Response] = []
    body = upload(*[png((640, 480))] * 32)
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(server.url + "/classify", files=body, timeout=60)))
    try:
        sender.start()
        # SIGTERM once the request is being worked on (not on a guess of how long it takes to
        # arrive): its first image decoded, 32 images of work still to finish.
        started = time.monotonic()
        while decoded_images(server.url) == 0:
            assert time.monotonic() - started < 30, "the request never reached the server"
            time.sleep(0.005)
        os.killpg(server.process.pid, signal.SIGTERM)
        sender.join(60)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert len(answers[0].json()["predictions"]) == 32
        server.process.wait(timeout=30)
        with pytest.raises(httpx.TransportError):  # nothing listens any more
            httpx.get(server.url + "/livez", timeout=2)
    finally:
        server.stop()


def test_a_killed_worker_is_replaced_and_serves_again(lite0_classifier, tmp_path):
    server = serve([lite0_classifier], tmp_path / "server.log")
    server.start()
    try:
        # BentoML's arbiter holds the listening socket; the worker that serves is its child.
        (worker,) = psutil.Process(server.process.pid).children()
        worker.kill()
        worker.wait(10)
        server.wait_ready()
        (replacement,) = psutil.Process(server.process.pid).children()
        assert replacement.pid != worker.pid
        answer = httpx.post(server.url + "/classify", files=upload(png((320, 240))), timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
    finally:
        server.stop()
