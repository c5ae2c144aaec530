"""Pure functions of the benchmark harness: percentiles, /metrics parsing and diffs, targets."""

from __future__ import annotations

import numpy as np
import pytest

from graft.benchmarks import metrics
from graft.benchmarks.service_bench import evaluate_targets
from graft.benchmarks.stats import latency_summary, percentile


@pytest.mark.parametrize("q", [0, 1, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(q):
    values = [0.013, 0.002, 0.5, 0.021, 0.02, 0.019, 0.3]
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError, match="at least one"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds():
    summary = latency_summary([0.010, 0.020, 0.030])
    assert summary["p50"] == pytest.approx(20.0)
    assert summary["mean"] == pytest.approx(20.0)
    assert latency_summary([]) == {}


def _exposition(batches: dict[str, int], batch_sum: float, decode_sum: float, decode_count: int) -> str:
    cumulative, lines = 0, []
    for le, n in batches.items():
        cumulative += n
        lines.append(f'graft_batch_size_bucket{{le="{le}",model="lite0"}} {cumulative}')
    return "\n".join([
        "# HELP graft_batch_size Executed batch size",
        "# TYPE graft_batch_size histogram",
        *lines,
        f'graft_batch_size_count{{model="lite0"}} {cumulative}',
        f'graft_batch_size_sum{{model="lite0"}} {batch_sum}',
        "# HELP graft_stage_seconds Time per stage",
        "# TYPE graft_stage_seconds histogram",
        f'graft_stage_seconds_bucket{{le="0.01",model="lite0",stage="decode"}} {decode_count}',
        f'graft_stage_seconds_bucket{{le="+Inf",model="lite0",stage="decode"}} {decode_count}',
        f'graft_stage_seconds_count{{model="lite0",stage="decode"}} {decode_count}',
        f'graft_stage_seconds_sum{{model="lite0",stage="decode"}} {decode_sum}',
        "# HELP graft_requests_total Requests",
        "# TYPE graft_requests_total counter",
        "graft_requests_total 7",
        "",
    ])


def test_histogram_diff_gives_only_the_cells_batches():
    before = metrics.parse_histograms(_exposition({"1": 3, "2": 0, "4": 0, "+Inf": 0}, 3, 0.006, 3))
    after = metrics.parse_histograms(_exposition({"1": 4, "2": 1, "4": 3, "+Inf": 0}, 3 + 1 + 2 + 12, 0.030, 19))
    change = metrics.diff(after, before)

    batch = metrics.batch_sizes(change)
    assert batch == {"batches": 5, "mean": pytest.approx(15 / 5), "distribution": {"1": 1, "2": 1, "4": 3}}

    stages = metrics.stage_seconds(change)
    assert stages == {"decode": {"seconds": pytest.approx(0.024), "observations": 16}}
    split = metrics.stage_split(stages, images=16)
    assert split["decode"]["share"] == pytest.approx(1.0)
    assert split["decode"]["ms_per_image"] == pytest.approx(1.5)


def test_no_histograms_means_none():
    empty = metrics.parse_histograms("# TYPE up gauge\nup 1\n")
    assert metrics.batch_sizes(empty) is None
    assert metrics.stage_seconds(empty) is None


def _row(server, size, clients, images_per_s, p50=10.0, p99=20.0, errors=None, error_latency_ms=None, mode="closed"):
    return {"server": server, "endpoint": "classify", "size": size, "concurrency": clients, "mode": mode,
            "images_per_s": images_per_s, "latency_ms": {"p50": p50, "p99": p99},
            "errors": errors or {}, "error_latency_ms": error_latency_ms or {}}


def test_targets_report_ratios_and_verdicts():
    rows = [_row("graft", "224", 16, 90.0), _row("graft", "224", 1, 30.0, p50=20.0),
            _row("graft", "2000", 16, 45.0), _row("baseline", "224", 16, 30.0),
            _row("graft", "224", 64, 90.0, p99=800.0),
            _row("graft", "224", 200, 85.0, p99=1200.0, errors={"429": 500, "503": 2},
                 error_latency_ms={"429": {"p99": 40.0}}, mode="overload"),
            _row("graft", "224", 200, 63.0, p99=3000.0, errors={"429": 9000}, mode="storm")]
    pipeline = {"images_per_second": 100.0, "batch1_p50_ms": 14.0}
    efficiency, speedup, single, large, refused, accepted, failures, storm = evaluate_targets(
        rows, pipeline, 200, storm=200)
    assert (efficiency["value"], efficiency["met"]) == (pytest.approx(0.9), True)
    assert (speedup["value"], speedup["met"]) == (pytest.approx(3.0), False)
    assert (single["value"], single["met"]) == (pytest.approx(20 / 17), False)
    assert (large["value"], large["met"]) == (pytest.approx(0.5), False)
    assert (refused["value"], refused["met"]) == (40.0, True)
    assert (accepted["value"], accepted["met"]) == (pytest.approx(1.5), True)
    assert (failures["value"], failures["met"]) == (2, False)
    assert (storm["value"], storm["met"]) == (pytest.approx(0.7), False)
    assert "9000 refused" in storm["detail"]


def test_the_2000px_target_names_its_bound_from_the_large_pipeline_ceiling():
    rows = [_row("graft", "224", 16, 120.0), _row("graft", "2000", 16, 72.0)]
    large_pipeline = {"images_per_second": 78.0}
    large = evaluate_targets(rows, None, None, large_pipeline=large_pipeline)[3]
    assert (large["value"], large["met"]) == (pytest.approx(0.6), False)
    assert "at most 0.65 on this machine" in large["detail"]
    assert "at most" not in evaluate_targets(rows, None, None)[3]["detail"]
    failed = [_row("graft", "224", 16, 0.0), _row("graft", "2000", 16, 0.0)]
    assert evaluate_targets(failed, None, None, large_pipeline=large_pipeline)[3]["value"] is None


def test_targets_without_a_baseline_are_not_measured():
    targets = evaluate_targets([_row("graft", "224", 16, 90.0)], None, None)
    assert all(t["met"] is None for t in targets)


def test_load_is_refused_beyond_loopback():
    from graft.benchmarks.load import require_loopback

    require_loopback("http://127.0.0.1:3000/classify")
    require_loopback("http://localhost:3000")
    with pytest.raises(ValueError, match="loopback"):
        require_loopback("http://10.1.2.3:3000/classify")


def test_profile_summary_shares_by_process_and_leaf():
    from graft.benchmarks.profile import summarise

    # py-spy names each process by its command line: two workers of one service here.
    root = 'process 9:"python -m bentoml serve graft.service.app:Graft --port 3000";'
    worker = 'process {pid}:"python -m bentoml.worker --fd {fd} --service-name {name}";'
    raw = "\n".join([
        root + worker.format(pid=10, fd=6, name="graft-a") + "run (runtime.py:40);InferenceSession.run (session.py:220) 60",
        root + worker.format(pid=11, fd=10, name="graft") + "load (app.py:170);decode_image (image.py:80) 30",
        root + worker.format(pid=11, fd=10, name="graft") + "decode_image (image.py:81) 10",
        "",
    ])
    summary = summarise(raw)
    assert summary["samples"] == 100
    assert summary["leaves"][0] == ["InferenceSession.run (session.py)", pytest.approx(0.6)]
    assert summary["leaves"][1] == ["decode_image (image.py)", pytest.approx(0.4)]
    assert summary["processes"] == {"10 graft-a": pytest.approx(0.6), "11 graft": pytest.approx(0.4)}


def test_graft_batch_histogram_wins_over_bentomls():
    text = "\n".join([
        "# TYPE bentoml_service_adaptive_batch_size histogram",
        'bentoml_service_adaptive_batch_size_bucket{le="1.0",service_name="graft-inference"} 0',
        'bentoml_service_adaptive_batch_size_bucket{le="+Inf",service_name="graft-inference"} 2',
        'bentoml_service_adaptive_batch_size_count{service_name="graft-inference"} 2',
        'bentoml_service_adaptive_batch_size_sum{service_name="graft-inference"} 16',
        _exposition({"1": 0, "8": 2, "+Inf": 0}, 16, 0.0, 0),
    ])
    batch = metrics.batch_sizes(metrics.parse_histograms(text))
    assert batch == {"batches": 2, "mean": 8.0, "distribution": {"8": 2}}
