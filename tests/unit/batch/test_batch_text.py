"""`graft batch embed` on a Parquet text column with the real all-MiniLM-L6-v2 artifact on a local Ray.

Equality is checked against what the service runs: the artifact's tokenizer, one padded batch,
ONNX Runtime, L2 normalisation.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graft.artifact.manifest import read_manifest
from graft.artifact.runtime import open_session
from graft.artifact.text import TextTokenizer, pad
from graft.batch.job import JobConfig, run_job
from graft.batch.sources import BatchInputError

pytest.importorskip("ray")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

TEXTS = [
    "The central bank left interest rates unchanged for the third month in a row.",
    "A late goal gave the home side a narrow win in the cup final.",
    "The new phone's battery lasts two days on a single charge.",
]


def reference(artifact, texts):
    manifest = read_manifest(artifact)
    ids, mask = pad([e.ids for e in TextTokenizer(artifact / "tokenizer.json", manifest.text).encode(texts)], 0)
    vectors = open_session(artifact / "model.onnx").run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_embed_a_text_column_keeps_the_other_columns(local_ray, text_artifact, tmp_path):
    long = " ".join(TEXTS * 20)
    table = pa.table({"id": pa.array([0, 1, 2, 3, 4, 5], pa.int64()),
                      "text": pa.array([*TEXTS, "", None, long], pa.string())})
    source = tmp_path / "texts.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    summary = run_job(JobConfig(task="embed", model=str(text_artifact), input=str(source), output=out, progress=False))
    rows = {row["id"]: row for row in pq.read_table(out).to_pylist()}
    assert sorted(rows) == list(range(6)) and summary.errors == 2
    expected = reference(text_artifact, TEXTS)
    for i in range(3):
        assert rows[i]["error"] is None and rows[i]["truncated"] is False and rows[i]["text"] == TEXTS[i]
        np.testing.assert_allclose(np.asarray(rows[i]["embedding"], np.float32), expected[i], atol=1e-5, rtol=0)
    assert "non-empty text" in rows[3]["error"] and "null" in rows[4]["error"] and rows[4]["embedding"] is None
    assert rows[5]["truncated"] is True and rows[5]["error"] is None


def test_text_jobs_refuse_what_they_cannot_do(text_artifact, tmp_path):
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"sentence": pa.array(TEXTS, pa.string())}), source)
    with pytest.raises(BatchInputError, match="string column 'text'.*--column"):
        run_job(JobConfig(task="embed", model=str(text_artifact), input=str(source), output=tmp_path / "a"))
    with pytest.raises(BatchInputError, match="graft batch embed"):
        run_job(JobConfig(task="classify", model=str(text_artifact), input=str(source), output=tmp_path / "b",
                          column="sentence"))
