"""Registration into a BentoML model store under a temporary BENTOML_HOME.

BentoML resolves BENTOML_HOME once per process (its DI container caches the store), so the CLI and
the checks run in fresh subprocesses with the variable set, never touching the user's store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from graft.artifact.manifest import read_manifest, sha256_file

pytestmark = pytest.mark.slow

CHECK = """
import json, sys
import bentoml
from graft.export import register_artifact

tag, artifact = sys.argv[1], sys.argv[2]
model = bentoml.models.get(tag)
print(json.dumps({
    "path": model.path,
    "labels": model.info.labels,
    "metadata": model.info.metadata,
    "again": register_artifact(artifact),
    "listed": [str(m.tag) for m in bentoml.models.list()],
}))
"""


def test_register_copies_the_artifact_into_the_store(lite0_classifier, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    registered = subprocess.run(
        [sys.executable, "-m", "graft.cli", "register", str(lite0_classifier)],
        env=env, capture_output=True, text=True, check=True,
    )
    manifest = read_manifest(lite0_classifier)
    tag = registered.stdout.strip()
    assert tag == f"{manifest.name}:{manifest.version}"

    checked = subprocess.run(
        [sys.executable, "-c", CHECK, tag, str(lite0_classifier)], env=env, capture_output=True, text=True, check=True,
    )
    store = json.loads(checked.stdout.strip().splitlines()[-1])
    assert store["path"].startswith(str(tmp_path / "bentoml"))
    assert store["again"] == tag and store["listed"] == [tag]  # registering again is idempotent
    assert store["labels"] == {"task": "classifier", "backbone": "tf_efficientnet_lite0", "precision": "fp32"}
    metadata = store["metadata"]
    assert metadata["num_classes"] == 1000 and metadata["embedding_dim"] == 1280
    assert metadata["labels"] == list(manifest.labels)
    assert metadata["sha256_model"] == manifest.sha256["model"]
    # the stored model is a usable artifact directory in its own right
    assert read_manifest(store["path"]) == manifest
    assert sha256_file(os.path.join(store["path"], "model.onnx")) == manifest.sha256["model"]


def test_register_refuses_a_tampered_artifact(lite0_embedder, tmp_path):
    import shutil

    artifact = tmp_path / "copy"
    shutil.copytree(lite0_embedder, artifact)
    with open(artifact / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    result = subprocess.run(
        [sys.executable, "-m", "graft.cli", "register", str(artifact)], env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2 and "file changed" in result.stderr
    assert not (tmp_path / "bentoml" / "models" / "tf_efficientnet_lite0-embedder").exists()
