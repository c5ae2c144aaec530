"""`graft batch` (Ray Data) against the running service: the same files give the same embeddings
(to 1e-5) and the same top-k as `/embed` and `/classify` over HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from graft.batch.job import JobConfig, run_job
from tests.e2e.conftest import upload

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]
TOP = 5


@pytest.fixture(scope="module")
def batch_outputs(lite0_classifier, photo_jpegs, tmp_path_factory):
    """Both batch jobs over the photo folder, in one local Ray each, read back by file name."""
    folder = next(iter(photo_jpegs.values())).parent
    out = tmp_path_factory.mktemp("batch")
    tables = {}
    for task in ("embed", "classify"):
        run_job(JobConfig(task=task, model=str(lite0_classifier), input=str(folder), output=out / task,
                          top_k=TOP, progress=False))
        rows = pq.read_table(out / task).to_pylist()
        tables[task] = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    return tables


def test_batch_embed_equals_embed(server, photo_jpegs, batch_outputs):
    names = list(photo_jpegs)
    response = httpx.post(server.url + "/embed", files=upload(*photo_jpegs.values()), timeout=60)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["embeddings"])
    batch = np.stack([np.asarray(batch_outputs["embed"][f"{name}.jpg"]["embedding"]) for name in names])
    assert all(batch_outputs["embed"][f"{name}.jpg"]["error"] is None for name in names)
    np.testing.assert_allclose(batch, served, atol=1e-5)


def test_batch_classify_equals_classify(server, photo_jpegs, batch_outputs):
    names = list(photo_jpegs)
    response = httpx.post(server.url + "/classify", files=upload(*photo_jpegs.values()),
                          data={"top_k": str(TOP)}, timeout=60)
    assert response.status_code == 200, response.text
    for name, predictions in zip(names, response.json()["predictions"]):
        row = batch_outputs["classify"][f"{name}.jpg"]
        assert row["labels"] == [p["label"] for p in predictions], name
        np.testing.assert_allclose(row["scores"], [p["score"] for p in predictions], atol=1e-5)
