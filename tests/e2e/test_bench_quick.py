"""`graft bench service --quick` and `graft bench model --quick` end to end: the harness works.

These start real servers (graft's service and the naive baseline) on free loopback ports and assert
that every figure the report needs was produced, not how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]


def _graft(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graft.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_bench_service_quick(lite0_classifier, tmp_path):
    out = tmp_path / "service"
    done = _graft("bench", "service", "--quick", "--model", str(lite0_classifier), "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((out / "results.json").read_text())
    assert result["environment"]["cpus"] >= 1 and result["environment"]["versions"]["onnxruntime-gpu"]
    assert result["ceiling"]["best"]["images_per_s"] > 0
    cells = result["cells"]
    expected = {(s, e, size, c) for s in ("graft", "baseline") for e, size in
                (("classify", "224"), ("classify", "2000"), ("embed", "224")) for c in (1, 16)}
    assert {(c["server"], c["endpoint"], c["size"], c["concurrency"]) for c in cells} == expected
    for cell in cells:
        assert cell["requests"] + cell["unfinished"] > 0 and not cell["errors"], cell
        if cell["server"] == "graft":  # the baseline may answer nothing in a quick cell on a busy machine
            assert cell["images_per_s"] > 0 and cell["latency_ms"]["p50"] > 0
            assert cell["batch"]["batches"] > 0, "executed batch sizes missing from /metrics"
            assert set(cell["stage_split"]) == {"decode", "preprocess", "normalize", "inference"}
    efficiency, speedup, single, large = result["targets"]
    assert None not in (efficiency["met"], single["met"], large["met"])
    for name in ("results.md", "throughput.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    assert "## Targets" in (out / "results.md").read_text()


def test_bench_model_quick(tmp_path):
    out = tmp_path / "model"
    done = _graft("bench", "model", "--quick", "--artifacts", str(tmp_path / "artifacts"), "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["engine"], r["batch_size"]) for r in rows} >= {
        (engine, batch) for engine in ("pytorch-eager-cpu-fp32", "onnxruntime-cpu-fp32") for batch in (1, 8)
    }
    assert all(r["images_per_s"] > 0 and r["iterations"] >= 2 for r in rows)
    assert (out / "model.png").stat().st_size > 0
