"""`graft batch` on a real local Ray with real artifacts and real image files.

Equality with the service is proven against the functions the service runs per image:
`decode_image(min_side=resize_size, max_pixels)` -> `preprocess` -> `Runner.infer` -> L2 (/embed) or
softmax + stable top-k (/classify), computed here in-process, one image at a time.
tests/e2e/test_batch_matches_service.py checks the same against a running server over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graft.artifact.image import DEFAULT_MAX_PIXELS, decode_image
from graft.artifact.manifest import read_manifest
from graft.artifact.postprocess import softmax
from graft.artifact.preprocessing import preprocess
from graft.artifact.runtime import Runner
from graft.batch.job import SUMMARY_FILE, JobConfig, run_job
from graft.batch.sources import BatchInputError

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(300)


def _runner(artifact: Path) -> Runner:
    return Runner(artifact, read_manifest(artifact), buckets=(1,), providers=("CPUExecutionProvider",),
                  intra_op_threads=0, trt_cache_dir=artifact / ".trt")


def _reference(runner: Runner, data: bytes) -> dict[str, np.ndarray]:
    spec = runner.manifest.preprocessing
    image = decode_image(data, min_side=spec.resize_size, max_pixels=DEFAULT_MAX_PIXELS)
    return {k: v[0] for k, v in runner.infer(preprocess(image, spec)[None]).items()}


def _rows(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in pq.read_table(out).to_pylist()}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_embed_equals_service_path_one_row_per_file(local_ray, lite0_classifier, held_out, tmp_path):
    root, corrupt = held_out
    out = tmp_path / "embeddings"
    summary = run_job(JobConfig(task="embed", model=str(lite0_classifier), input=str(root), output=out,
                                batch_size=4, decode_batch_size=3, progress=False))

    files = _files(root)
    rows = _rows(out)
    assert sorted(rows) == [str(p) for p in files]
    assert {Path(p).name for p, row in rows.items() if row["error"]} == corrupt
    assert (summary.images, summary.errors) == (len(files), len(corrupt))
    schema = pq.read_schema(next(out.glob("*.parquet")))
    manifest = read_manifest(lite0_classifier)
    assert schema.field("embedding").type == pa.list_(pa.float32(), manifest.embedding_dim)
    assert not list(tmp_path.glob("*.tmp-*")), "the temporary output must be renamed into place"
    assert (out / SUMMARY_FILE).is_file()

    runner = _runner(lite0_classifier)
    for path in files:
        row = rows[str(path)]
        assert (row["model"], row["version"]) == (manifest.name, manifest.version)
        if path.name in corrupt:
            assert row["embedding"] is None and row["error"]
            continue
        expected = _reference(runner, path.read_bytes())["embedding"]
        expected = expected / np.maximum(np.linalg.norm(expected), 1e-12)
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected, atol=1e-5, rtol=0)


def test_classify_equals_service_top_k(local_ray, lite0_classifier, held_out, tmp_path):
    root, corrupt = held_out
    out = tmp_path / "top3"
    run_job(JobConfig(task="classify", model=str(lite0_classifier), input=f"{root}/**/*.*", output=out,
                      top_k=3, batch_size=8, progress=False))
    rows = _rows(out)
    runner = _runner(lite0_classifier)
    labels = runner.manifest.labels
    checked = 0
    for path in _files(root):
        row = rows[str(path)]
        if path.name in corrupt:
            assert row["labels"] is None and row["error"]
            continue
        probabilities = softmax(_reference(runner, path.read_bytes())["logits"][None])[0]
        best = np.argsort(-probabilities, kind="stable")[:3]
        assert row["indices"] == best.tolist()
        assert row["labels"] == [labels[i] for i in best]
        np.testing.assert_allclose(row["scores"], probabilities[best], atol=1e-5, rtol=0)
        checked += 1
    assert checked == 8
    assert "cat" in rows[str(root / "chelsea.jpg")]["labels"][0]  # a real model on a real photo


def test_parquet_bytes_input_keeps_other_columns(local_ray, lite0_embedder, photo_jpegs, tmp_path):
    names = sorted(photo_jpegs)
    table = pa.table({
        "id": pa.array(range(len(names)) , pa.int64()),
        "image": pa.array([photo_jpegs[n].read_bytes() for n in names] + [], pa.binary()),
    })
    table = pa.concat_tables([table, pa.table({"id": pa.array([99], pa.int64()), "image": pa.array([b"\xff\xd8junk"], pa.binary())})])
    source = tmp_path / "images.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    summary = run_job(JobConfig(task="embed", model=str(lite0_embedder), input=str(source), output=out, progress=False))
    rows = {row["id"]: row for row in pq.read_table(out).to_pylist()}
    assert sorted(rows) == [*range(len(names)), 99]
    assert rows[99]["error"] and summary.errors == 1
    runner = _runner(lite0_embedder)
    for i, name in enumerate(names):
        assert rows[i]["path"] is None and rows[i]["error"] is None
        expected = _reference(runner, photo_jpegs[name].read_bytes())["embedding"]
        expected = expected / np.linalg.norm(expected)
        np.testing.assert_allclose(np.asarray(rows[i]["embedding"], np.float32), expected, atol=1e-5, rtol=0)


def test_parquet_path_column_and_unreadable_file(local_ray, lite0_embedder, photo_jpegs, tmp_path):
    paths = [str(p) for p in photo_jpegs.values()] + [str(tmp_path / "missing.jpg")]
    source = tmp_path / "paths"
    source.mkdir()
    pq.write_table(pa.table({"path": paths, "caption": [f"c{i}" for i in range(len(paths))]}), source / "part-0.parquet")
    out = tmp_path / "out"
    run_job(JobConfig(task="embed", model=str(lite0_embedder), input=str(source), output=out,
                      normalize=False, progress=False))
    rows = _rows(out)
    assert sorted(rows) == sorted(paths)
    assert rows[paths[-1]]["error"].startswith("FileNotFoundError")
    assert [rows[p]["caption"] for p in paths] == [f"c{i}" for i in range(len(paths))]
    runner = _runner(lite0_embedder)
    expected = _reference(runner, Path(paths[0]).read_bytes())["embedding"]  # raw: --no-normalize
    np.testing.assert_allclose(np.asarray(rows[paths[0]]["embedding"], np.float32), expected, atol=1e-5, rtol=0)


def test_head_applied_to_embedding(local_ray, lite0_embedder, photo_jpegs, tmp_path):
    heads = pytest.importorskip("graft.artifact.heads")
    manifest = read_manifest(lite0_embedder)
    rng = np.random.default_rng(0)
    head = heads.make_head(
        "toy", ["a", "b", "c"], weight=rng.normal(size=(3, manifest.embedding_dim)).astype(np.float32),
        bias=np.zeros(3, np.float32), backbone=manifest,
        provenance=heads.Provenance(source="api", num_images=3, images_per_class={"a": 1, "b": 1, "c": 1}),
    )
    head_dir = heads.write_head(tmp_path / "head", head)
    out = tmp_path / "out"
    run_job(JobConfig(task="classify", model=str(lite0_embedder), head=head_dir, input=str(photo_jpegs["coffee"]),
                      output=out, top_k=2, progress=False))
    (row,) = pq.read_table(out).to_pylist()
    probabilities = softmax(head.apply(_reference(_runner(lite0_embedder), photo_jpegs["coffee"].read_bytes())["embedding"][None]))[0]
    best = np.argsort(-probabilities, kind="stable")[:2]
    assert row["labels"] == [head.labels[i] for i in best]
    np.testing.assert_allclose(row["scores"], probabilities[best], atol=1e-5, rtol=0)
    assert row["model"] == f"{manifest.name}+toy"


def test_refuses_existing_output_and_bad_arguments(lite0_classifier, lite0_embedder, held_out, tmp_path):
    root, _ = held_out
    out = tmp_path / "exists"
    out.mkdir()
    (out / "mine.txt").write_text("not graft's")
    with pytest.raises(BatchInputError, match="exists; pass --overwrite"):
        run_job(JobConfig(task="embed", model=str(lite0_classifier), input=str(root), output=out))
    with pytest.raises(BatchInputError, match="something else"):
        run_job(JobConfig(task="embed", model=str(lite0_classifier), input=str(root), output=out, overwrite=True))
    with pytest.raises(BatchInputError, match="expected a classifier artifact"):
        run_job(JobConfig(task="classify", model=str(lite0_embedder), input=str(root), output=tmp_path / "x"))
    with pytest.raises(BatchInputError, match="BentoML model tag"):
        run_job(JobConfig(task="embed", model="no-such-model-tag", input=str(root), output=tmp_path / "x"))


def test_cli_starts_and_stops_its_own_ray(lite0_classifier, photo_jpegs, tmp_path):
    """The real command line: a local Ray started by the command, a summary line, exit code 0."""
    out = tmp_path / "cli-out"
    env = {**os.environ, "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "graft.cli", "batch", "embed", "--model", str(lite0_classifier),
               "--input", str(next(iter(photo_jpegs.values())).parent), "--output", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(photo_jpegs)} images, 0 errors" in done.stdout
    assert pq.read_table(out).num_rows == len(photo_jpegs)
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr.strip().splitlines()[-1]


def test_decoding_stays_out_of_the_inference_actors(local_ray, lite0_classifier, photo_jpegs, tmp_path, capsys):
    """Decode tasks and the ORT actor pool are separate operators, so decoding overlaps inference."""
    from graft.batch.job import build_pipeline
    from graft.batch.sources import resolve_source

    config = JobConfig(task="embed", model=str(lite0_classifier), input=str(photo_jpegs["coffee"]), output=tmp_path / "o")
    dataset, actors, gpus = build_pipeline(config, lite0_classifier, read_manifest(lite0_classifier),
                                           resolve_source(config.input))
    dataset.explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
    assert "TaskPoolMapOperator[MapBatches(decode)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(Infer)]" in optimized
    assert (actors, gpus) == (1, 0)
