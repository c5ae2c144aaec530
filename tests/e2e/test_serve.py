"""`graft serve` as a real subprocess on a free port, spoken to over plain HTTP (httpx).

One server per module (classifier + embedder) serves every test: correctness against the artifact
run directly in ONNX Runtime, batching and ordering under concurrency, bad input, readiness, the
server's processes, and `bentoml build`.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from graft.artifact.image import decode_image
from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.preprocessing import preprocess

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

from tests.e2e.conftest import EMBEDDER, REPO, Server, free_port, png, upload


@pytest.fixture(scope="module")
def reference(lite0_classifier, lite0_embedder, photo_jpegs):
    """What the artifacts give run directly in ONNX Runtime: softmax and embedding per photo."""
    results = {}
    for directory in (lite0_classifier, lite0_embedder):
        manifest = read_manifest(directory)
        session = ort.InferenceSession(str(directory / MODEL_FILE), providers=["CPUExecutionProvider"])
        spec = manifest.preprocessing
        batch = np.stack([
            preprocess(decode_image(path.read_bytes(), min_side=spec.resize_size), spec)
            for path in photo_jpegs.values()
        ])
        names = [o.name for o in manifest.io.outputs]
        outputs = dict(zip(names, session.run(names, {manifest.io.input.name: batch})))
        for i, photo in enumerate(photo_jpegs):
            entry = results.setdefault(photo, {})
            if "logits" in outputs:
                logits = outputs["logits"][i].astype(np.float64)
                entry["probabilities"] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                entry["embedding"] = outputs["embedding"][i]
            else:
                entry["embedder_embedding"] = outputs["embedding"][i]
    return results


def test_readyz_is_503_until_models_are_warmed(server):
    assert 503 in server.readiness, f"never saw 'not ready' before ready: {server.readiness[-20:]}"
    assert server.readiness[-1] == 200
    first_503 = server.readiness.index(503)
    assert all(status != 200 for status in server.readiness[:first_503])
    assert httpx.get(server.url + "/livez").status_code == 200
    early = server.early_classify
    assert early is not None and early.status_code == 503, early and early.text
    assert "retry" in early.json()["error"]


def test_classify_matches_onnxruntime_in_order(server, photo_jpegs, reference):
    names = list(photo_jpegs)
    response = httpx.post(server.url + "/classify", files=upload(*photo_jpegs.values()), data={"top_k": "5"}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(names)
    for name, top in zip(names, predictions):
        probabilities = reference[name]["probabilities"]
        expected = np.argsort(-probabilities)[:5]
        assert [p["index"] for p in top] == expected.tolist(), name
        np.testing.assert_allclose([p["score"] for p in top], probabilities[expected], atol=1e-4)
    assert any("cat" in p["label"] for p in predictions[names.index("chelsea")][:3])


@pytest.mark.parametrize("model, key", [("", "embedding"), (EMBEDDER, "embedder_embedding")])
def test_embed_matches_onnxruntime(server, photo_jpegs, reference, model, key):
    response = httpx.post(server.url + "/embed", files=upload(*photo_jpegs.values()), data={"model": model}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["embeddings"])
    assert body["dim"] == 1280 and vectors.shape == (len(photo_jpegs), 1280)
    for name, vector in zip(photo_jpegs, vectors):
        expected = reference[name][key] / np.linalg.norm(reference[name][key])
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, expected, atol=1e-4)


def batch_histogram(metrics_text: str, model: str) -> tuple[float, float]:
    total = count = 0.0
    for line in metrics_text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("graft_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("graft_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


def test_sixteen_concurrent_clients_are_batched_and_each_gets_its_answer(server, photo_jpegs, reference):
    names = list(photo_jpegs)
    blobs = {name: path.read_bytes() for name, path in photo_jpegs.items()}
    expected_top1 = {name: int(np.argmax(reference[name]["probabilities"])) for name in names}
    model = "tf_efficientnet_lite0"

    async def client(number: int, http: httpx.AsyncClient) -> list[tuple[str, int]]:
        seen = []
        for round_ in range(6):
            name = names[(number + round_) % len(names)]
            response = await http.post("/classify", files=upload(blobs[name]), data={"top_k": "1"})
            assert response.status_code == 200, response.text
            seen.append((name, response.json()["predictions"][0][0]["index"]))
        return seen

    async def load():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            before = batch_histogram((await http.get("/metrics")).text, model)
            answers = await asyncio.gather(*(client(n, http) for n in range(16)))
            after = batch_histogram((await http.get("/metrics")).text, model)
        return answers, before, after

    answers, before, after = asyncio.run(load())
    for seen in answers:
        assert all(index == expected_top1[name] for name, index in seen), seen
    images, batches = after[0] - before[0], after[1] - before[1]
    assert images == 16 * 6
    assert images / batches > 4, f"mean executed batch {images / batches:.2f} over {batches:.0f} batches"


def test_stage_metrics_are_labelled_by_model(server, photo_jpegs):
    assert httpx.post(server.url + "/classify", files=upload(photo_jpegs["chelsea"]), timeout=60).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for stage in ("decode", "preprocess", "normalize", "inference"):
        assert f'graft_stage_duration_seconds_count{{model="tf_efficientnet_lite0",stage="{stage}"}}' in text


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(png((16, 16)))

    def log_message(self, *args):
        pass


def test_bad_inputs_get_4xx_json_and_the_server_keeps_serving(server, photo_jpegs):
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    bait = f"http://127.0.0.1:{recorder.server_address[1]}/cat.jpg"
    jpeg = photo_jpegs["chelsea"].read_bytes()
    small = png((8, 8))
    cases = [
        ("/classify", {"files": upload(b"this is not an image")}, 400),
        ("/classify", {"files": upload(jpeg[: len(jpeg) // 3])}, 400),
        ("/classify", {"files": upload(b"")}, 400),
        ("/classify", {"files": upload(png((2100, 2000)))}, 400),
        ("/classify", {"files": upload(*[small] * 9)}, 400),
        ("/classify", {"files": upload(small, field_name="file")}, 400),
        ("/classify", {"data": {"top_k": "1"}}, 400),
        ("/classify", {"files": upload(small), "data": {"top_k": "0"}}, 400),
        ("/classify", {"files": upload(small), "data": {"top_k": "-1"}}, 400),
        ("/classify", {"files": upload(small), "data": {"top_k": "1.5"}}, 400),
        ("/classify", {"files": upload(small), "data": {"model": "resnet9000"}}, 404),
        ("/embed", {"files": upload(small), "data": {"model": "resnet9000"}}, 404),
        ("/embed", {"files": upload(small), "data": {"normalize": "maybe"}}, 400),
        ("/classify", {"data": {"images": bait}}, 400),
        ("/embed", {"data": {"images": [bait, bait]}}, 400),
        ("/classify", {"json": {"images": [bait]}}, 400),
        ("/classify", {"content": b"x" * (5 << 20), "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413),
        ("/classify", {"content": b"\x00\x01garbage", "headers": {"content-type": "application/octet-stream"}}, 400),
    ]
    try:
        for path, kwargs, status in cases:
            response = httpx.post(server.url + path, timeout=60, **kwargs)
            assert response.status_code == status, (path, kwargs.get("data"), response.text)
            body = response.json()
            assert set(body) == {"error", "expected", "got"} and body["error"], body
        wrong_method = httpx.get(server.url + "/classify", timeout=60)
        assert wrong_method.status_code == 405
        assert wrong_method.json()["expected"] == "POST on /classify"
        typo = httpx.post(server.url + "/clasify", files=upload(jpeg), timeout=60)
        assert typo.status_code == 404 and typo.json()["got"] == "POST /clasify"
    finally:
        recorder.shutdown()
    assert _Recorder.hits == [], "the server fetched a URL it was sent"
    assert httpx.post(server.url + "/classify", files=upload(jpeg), timeout=60).status_code == 200


def server_processes(root: int) -> list[int]:
    """The server's process tree: the process we started and every descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def test_memory_benchmark_loads_the_default_classifier_on_classify(server, photo_jpegs):
    # The default model here is the classifier (the INT8 embedder's /embed: tests/e2e/test_int8.py).
    from graft.benchmarks.memory_bench import served_workload

    workload = served_workload(server.url, list(photo_jpegs.values()))
    assert workload.url == server.url + "/classify" and workload.form == {"top_k": "5"}


def test_no_server_process_has_torch_loaded(server):
    processes = server_processes(server.process.pid)
    assert len(processes) >= 2, "expected the arbiter and a worker"
    for pid in processes:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "/torch/" not in maps and "libtorch" not in maps, f"process {pid} has torch mapped"
    # and it really serves with ONNX Runtime loaded somewhere in that tree
    assert any("onnxruntime" in Path(f"/proc/{pid}/maps").read_text() for pid in processes)


def test_a_bento_packages_graft_without_torch_and_serves_the_model_it_was_built_with(lite0_embedder, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    env = {k: v for k, v in env.items() if not k.startswith("GRAFT_")}
    built = subprocess.run(["make", "--no-print-directory", "bento", f"MODEL={lite0_embedder}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1]
    (bento,) = (tmp_path / "bentoml" / "bentos" / "graft").glob("*/bento.yaml")
    root = bento.parent
    assert f"graft:{root.name}" == tag
    assert f"{EMBEDDER}:" in bento.read_text(), "the model is not bundled"
    requirements = (root / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime>=" in requirements and "onnxruntime-gpu" not in requirements
    assert "torch" not in requirements.lower() and "scipy" not in requirements.lower()
    wheels = [p.name for p in (root / "env" / "python" / "wheels").glob("graft-*.whl")]
    assert len(wheels) == 1, "graft itself is installed from its wheel"
    assert not list((root / "src").rglob("*.py")), "no source folders copied beside the wheel"

    # `bentoml serve` of the Bento, as its container does: the model it was built with, no GRAFT_MODELS.
    port = free_port()
    with open(tmp_path / "bento.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        bento_server = Server([], env, tmp_path / "bento.log", url=f"http://127.0.0.1:{port}", process=process)
        bento_server.wait_ready()
        models = httpx.get(bento_server.url + "/models", timeout=10).json()
        assert [model["name"] for model in models["models"]] == [EMBEDDER], models
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
