"""graft bench service --compare: an embedder's plan, and FP32 and INT8 figures side by side."""

import pytest

from graft.benchmarks.report import side_by_side_table
from graft.benchmarks.service_bench import Plan, side_by_side


def test_an_embedders_plan_sends_every_size_and_the_overload_cells_to_embed():
    plan = Plan().for_task("embedder")
    cells = plan.cells("graft")
    assert {cell.endpoint for cell in cells} == {"embed"}
    assert sorted({cell.size for cell in cells}, key=int) == ["224", "640", "2000"]
    assert {cell.mode for cell in cells} == {"closed", "overload", "storm"}
    assert Plan().for_task("classifier") == Plan()


def _result(precision, ceiling, pipeline, per_clients):
    cells = [{"server": "graft", "endpoint": "embed", "size": "224", "concurrency": n, "mode": "closed",
              "images_per_s": rate, "latency_ms": {"p50": p50, "p99": 2 * p50}} for n, (rate, p50) in per_clients.items()]
    return {"settings": {"plan": {"endpoint": "embed"}, "precision": precision},
            "ceiling": {"best": {"images_per_s": ceiling}}, "pipeline": {"images_per_second": pipeline}, "cells": cells}


def test_side_by_side_gives_ratios_to_the_first_artifact():
    rows = side_by_side({
        "fp32": _result("fp32", 160.0, 130.0, {1: (80.0, 12.0), 16: (110.0, 140.0)}),
        "int8": _result("int8", 320.0, 200.0, {1: (100.0, 8.4), 16: (176.0, 90.0)}),
    }, clients=(1, 16, 64))
    fp32, int8 = rows
    assert fp32["ratios"]["model_ceiling"] == 1.0
    assert int8["ratios"]["model_ceiling"] == pytest.approx(2.0)
    assert int8["ratios"]["c16_images_per_s"] == pytest.approx(1.6)
    assert int8["ratios"]["c1_p50"] == pytest.approx(0.7)
    assert int8["c64"]["images_per_s"] is None and int8["ratios"]["c64_images_per_s"] is None  # not measured
    table = side_by_side_table(rows)
    assert "| int8 | int8 | 320.0 (2.00x) | 200.0 (1.54x) | 100.0 (1.25x); 8.4 (0.70x) / 16.8 |" in table


def test_an_embedders_cells_are_plotted(tmp_path):
    from graft.benchmarks.report import plot_service

    cells = [{"server": "graft", "endpoint": "embed", "size": "224", "concurrency": n, "mode": "closed",
              "images_per_s": 50.0 + n, "latency_ms": {"p50": 10.0 * n, "p95": 12.0 * n, "p99": 15.0 * n}}
             for n in (1, 16, 64)]
    plots = plot_service(cells, None, tmp_path)
    assert [path.name for path in plots] == ["throughput.png", "latency.png"]
    assert all(path.stat().st_size > 0 for path in plots)
