"""Input and model resolution on the driver, before any Ray is started."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graft.batch.sources import BatchInputError, FileSource, ParquetSource, resolve_model, resolve_source


def test_folder_tree_lists_every_visible_file(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/x.jpg", "a/y.txt", "z.png", ".DS_Store", "a/.hidden/w.jpg"):
        (tmp_path / name).write_bytes(b"x")
    source = resolve_source(str(tmp_path))
    assert isinstance(source, FileSource)
    assert [p.removeprefix(str(tmp_path)) for p in source.paths] == ["/a/x.jpg", "/a/y.txt", "/z.png"]


def test_glob_and_single_file(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.png"):
        (tmp_path / name).write_bytes(b"x")
    assert len(resolve_source(f"{tmp_path}/*.jpg").paths) == 2
    assert resolve_source(str(tmp_path / "3.png")).paths == (str(tmp_path / "3.png"),)
    with pytest.raises(BatchInputError, match="expected image files"):
        resolve_source(f"{tmp_path}/*.gif")


def test_parquet_columns_detected_or_refused(tmp_path):
    pq.write_table(pa.table({"path": ["a"], "image": pa.array([b"x"], pa.binary())}), tmp_path / "both.parquet")
    assert resolve_source(str(tmp_path / "both.parquet")) == ParquetSource(str(tmp_path / "both.parquet"), "image", "path")
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.table({"file": ["a.jpg"], "n": [1]}), folder / "part-0.parquet")
    assert resolve_source(str(folder)) == ParquetSource(str(folder), None, "file")
    pq.write_table(pa.table({"n": [1]}), tmp_path / "none.parquet")
    with pytest.raises(BatchInputError, match="expected a binary image-bytes column"):
        resolve_source(str(tmp_path / "none.parquet"))
    with pytest.raises(BatchInputError, match="--column"):
        resolve_source(str(tmp_path / "both.parquet"), column="nope")


def test_missing_input_and_model(tmp_path):
    with pytest.raises(BatchInputError, match="does not exist"):
        resolve_source(str(tmp_path / "nothing"))
    with pytest.raises(BatchInputError, match="manifest.json"):
        resolve_model(str(tmp_path))


def test_decode_stage_turns_null_and_missing_paths_into_errors(tmp_path, photo_jpegs):
    from graft.artifact.preprocessing import PreprocessingSpec
    from graft.batch.stages import decode

    spec = PreprocessingSpec(input_size=(224, 224), resize_size=256)
    paths = np.array([None, str(tmp_path / "missing.jpg"), str(photo_jpegs["coffee"])], dtype=object)
    out = decode({"path": paths, "id": np.arange(3)}, spec=spec, max_pixels=None, bytes_column=None, path_column="path")
    assert out["error"][0] == "ValueError: expected an image path, got null"
    assert out["error"][1].startswith("FileNotFoundError")
    assert out["error"][2] == "" and out["pixels"][2].any() and not out["pixels"][0].any()
    assert out["id"].tolist() == [0, 1, 2] and out["pixels"].shape == (3, 224, 224, 3)


def test_batch_path_imports_no_torch_and_no_service():
    """Batch workers load only `artifact/`, ONNX Runtime, Ray and pyarrow (DESIGN: imports run one way)."""
    import subprocess
    import sys

    forbidden = ("torch", "torchvision", "timm", "onnx", "graft.models", "graft.export", "graft.service")
    code = (
        "import sys; import graft.batch.job, graft.batch.stages, graft.batch.cli; "
        f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r})); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
