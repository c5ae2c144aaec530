"""The manifest contract: round trip, validation errors, atomic write, hash check. Torch-free and fast."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from graft.artifact.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SCHEMA_VERSION,
    IOSpec,
    Manifest,
    ManifestError,
    ParityFigures,
    TensorSpec,
    WeightsInfo,
    read_manifest,
    sha256_file,
    verify_model_hash,
    write_manifest,
)
from graft.artifact.preprocessing import PreprocessingSpec

SPEC = PreprocessingSpec(input_size=(224, 224), resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def io(classes: int | None = 3, dim: int = 8, size: tuple[int, int] = (224, 224)) -> IOSpec:
    outputs = (TensorSpec("embedding", (None, dim)),)
    if classes is not None:
        outputs = (TensorSpec("logits", (None, classes)), *outputs)
    return IOSpec(input=TensorSpec("input", (None, 3, *size)), outputs=outputs)


def classifier(**changes) -> Manifest:
    fields = dict(
        name="demo",
        version="abc123",
        task="classifier",
        backbone="tf_efficientnet_lite0",
        created_at="2026-01-01T00:00:00+00:00",
        preprocessing=SPEC,
        io=io(),
        embedding_dim=8,
        weights=WeightsInfo(source="/w.pth", pretrained=True, sha256="00" * 32),
        sha256={"model": "11" * 32, "weights": "00" * 32},
        parity={
            "fp32": ParityFigures(
                images=5, batch_size=5, max_abs_diff={"logits": 1e-6, "embedding": 2e-6}, tolerance=1e-4,
                max_scaled_diff={"logits": 1e-7, "embedding": 7e-7}, top1_agreement=1.0, min_top1_agreement=1.0,
                sources=("skimage: chelsea",),
            )
        },
        labels=("cat", "dog", "bird"),
        producer={"torch": "2.14.1"},
        metrics={"accuracy": 0.9},
    )
    fields.update(changes)
    return Manifest(**fields)


def test_round_trip_json_and_dict():
    manifest = classifier()
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    data = manifest.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["io"]["input"]["shape"] == [None, 3, 224, 224]
    assert manifest.num_classes == 3


def test_embedder_round_trip():
    manifest = classifier(task="embedder", labels=(), io=io(classes=None))
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert [o.name for o in manifest.io.outputs] == ["embedding"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(labels=("cat", "dog")), "expected 3 labels"),
        (dict(labels=()), "list its labels"),
        (dict(io=io(classes=None)), "'logits' output"),
        (dict(task="embedder"), "no 'logits' output and no labels"),
        (dict(embedding_dim=9), "embedding output of dim 9"),
        (dict(io=io(size=(256, 256))), "expected input shape"),
        (dict(schema_version=SCHEMA_VERSION + 1), "schema_version"),
    ],
)
def test_inconsistent_manifest_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        classifier(**changes)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("io"), "io"),
        (lambda d: d.update(task="detector"), "task"),
        (lambda d: d.update(name=""), "name"),
        (lambda d: d.update(embedding_dim=0), "embedding_dim"),
        (lambda d: d["parity"]["fp32"].update(top1_agreement=1.5), "top1_agreement"),
        (lambda d: d["parity"]["fp32"].update(images=0), "images"),
        (lambda d: d["preprocessing"].update(resize_size=100), "resize_size"),
        (lambda d: d["io"]["input"].update(dtype="int8"), "dtype"),
    ],
)
def test_invalid_json_names_the_problem(mutate, field):
    data = classifier().to_dict()
    mutate(data)
    with pytest.raises(ManifestError, match=field):
        Manifest.from_json(json.dumps(data))


def test_malformed_json_is_a_manifest_error():
    with pytest.raises(ManifestError, match="invalid manifest"):
        Manifest.from_json("{not json")


def test_a_bad_manifest_file_is_one_line_naming_the_file_and_every_field(tmp_path):
    data = classifier().to_dict()
    del data["io"]
    data["labels"] = "cat"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"invalid manifest {tmp_path / 'manifest.json'}: ")
    assert "io: Field required" in message and "labels:" in message


def test_an_image_manifest_needs_its_preprocessing_block():
    data = classifier().to_dict()
    del data["preprocessing"]
    with pytest.raises(ManifestError, match="expected a preprocessing block for an image model, got none"):
        Manifest.from_dict(data)


def test_manifest_is_immutable():
    manifest = classifier()
    with pytest.raises(Exception):
        manifest.name = "other"
    assert replace(manifest, version="2").version == "2"


def test_write_read_and_hash(tmp_path):
    model = tmp_path / MODEL_FILE
    model.write_bytes(b"onnx bytes")
    manifest = classifier(sha256={"model": sha256_file(model)})
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / MANIFEST_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE, MODEL_FILE]  # no temp file left
    assert path.stat().st_mode & 0o044 == 0o044  # readable by a service running as another user
    assert read_manifest(tmp_path) == manifest
    verify_model_hash(tmp_path, manifest)
    model.write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="file changed"):
        verify_model_hash(tmp_path, manifest)


def test_read_manifest_of_a_non_artifact(tmp_path):
    with pytest.raises(ManifestError, match="expected an artifact directory"):
        read_manifest(tmp_path)


def test_artifact_contract_imports_without_torch():
    code = "import sys, artifact.manifest, artifact.preprocessing, artifact.image; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
