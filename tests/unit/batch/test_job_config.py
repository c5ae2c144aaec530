"""A batch job's runtime defaults are the service's settings: one variable tunes both."""

from __future__ import annotations

import pytest

from graft.artifact.settings import ConfigError, RuntimeSettings
from graft.cli import main

pytest.importorskip("pyarrow")
job = pytest.importorskip("graft.batch.job")

RUNTIME = ("GRAFT_MAX_BATCH_SIZE", "GRAFT_INTRA_OP_THREADS", "GRAFT_PROVIDERS", "GRAFT_TRT_CACHE_DIR")


@pytest.fixture(autouse=True)
def _runtime_unset(monkeypatch):
    for name in RUNTIME:
        monkeypatch.delenv(name, raising=False)


def _config(**values) -> job.JobConfig:
    return job.JobConfig(task="embed", model="m", input="in", output="out", **values)


def test_defaults_are_the_runtime_settings():
    settings, config = RuntimeSettings(), _config()
    assert (config.batch_size, config.intra_op_threads, config.providers, config.trt_cache_dir) == (
        settings.max_batch_size, settings.intra_op_threads, settings.providers, settings.trt_cache_dir)
    assert config.batch_size == 32 and config.providers[-1] == "CPUExecutionProvider"


def test_the_service_variables_tune_the_job_and_arguments_win(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAFT_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("GRAFT_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("GRAFT_TRT_CACHE_DIR", str(tmp_path))
    config = _config(intra_op_threads=2)
    assert (config.batch_size, config.intra_op_threads, config.providers, config.trt_cache_dir) == (
        8, 2, ("CPUExecutionProvider",), tmp_path)
    assert _config(batch_size=4).batch_size == 4


def test_a_bad_variable_stops_the_job_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GRAFT_INTRA_OP_THREADS", "-2")
    with pytest.raises(ConfigError, match="^expected GRAFT_INTRA_OP_THREADS to be an integer >= 0, got '-2'$"):
        _config()
    assert main(["batch", "embed", "--model", "m", "--input", "in", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "graft batch: error: expected GRAFT_INTRA_OP_THREADS to be an integer >= 0, got '-2'"]


def test_cli_flags_win_and_unset_ones_follow_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAFT_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("GRAFT_INTRA_OP_THREADS", "3")
    ran: list[job.JobConfig] = []

    class Summary:
        def line(self) -> str:
            return "done"

    monkeypatch.setattr(job, "run_job", lambda config: ran.append(config) or Summary())
    argv = ["batch", "embed", "--model", "m", "--input", "in", "--output", str(tmp_path / "o")]
    assert main(argv) == 0 and main([*argv, "--batch-size", "4"]) == 0
    assert [(c.batch_size, c.intra_op_threads) for c in ran] == [(16, 3), (4, 3)]
