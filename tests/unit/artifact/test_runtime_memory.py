"""Session settings on the CPU provider (tiny synthetic model, no torch): runs of at most
`CPU_RUN_LIMIT` images and a start-up load check that keeps no optimised graph (memory); intra-op
spinning modes and the start-up choice between them."""

import logging

import numpy as np
import onnxruntime as ort
import pytest

from graft.artifact.manifest import MODEL_FILE
from graft.artifact.runtime import CPU_RUN_LIMIT, Runner, open_session
from tests.synthetic import write_artifact


class RecordingSession:
    """The runner's real ONNX Runtime session, noting the batch size of every run."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.sizes: list[int] = []

    def run(self, names, feeds):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def _runner(directory, manifest, buckets):
    runner = Runner(directory, manifest, buckets=buckets, providers=("CPUExecutionProvider",), intra_op_threads=1,
                    trt_cache_dir=directory / "trt")
    plain = runner.session
    runner.session = RecordingSession(plain)
    return runner, plain


def test_cpu_runs_take_at_most_the_run_limit_and_match_one_run(tmp_path):
    manifest = write_artifact(tmp_path)
    runner, plain = _runner(tmp_path, manifest, (1, 2, 4, 8, 16, 32))
    assert runner.run_limit == CPU_RUN_LIMIT < 32
    batch = np.random.default_rng(0).random((21, 3, *manifest.preprocessing.input_size), np.float32)
    outputs = runner.infer(batch)
    assert runner.session.sizes == [8, 8, 5]
    names = [output.name for output in manifest.io.outputs]
    whole = dict(zip(names, plain.run(names, {manifest.io.input.name: batch})))
    for name in names:
        np.testing.assert_allclose(outputs[name], whole[name], rtol=1e-5, atol=1e-6)


def test_warmup_runs_only_the_sizes_a_cpu_session_sees(tmp_path):
    manifest = write_artifact(tmp_path)
    runner, _ = _runner(tmp_path, manifest, (1, 2, 4, 8, 16, 32))
    runner.warmup()
    assert runner.session.sizes == [1, 2, 4, 8]
    single, _ = _runner(tmp_path, manifest, (32,))
    single.warmup()
    assert single.session.sizes == [CPU_RUN_LIMIT]


def test_a_load_check_runs_the_graph_unoptimised(tmp_path):
    write_artifact(tmp_path)
    session = open_session(tmp_path / MODEL_FILE, optimize=False)
    names = [output.name for output in session.get_outputs()]
    assert names and session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def _entry(options: ort.SessionOptions, key: str) -> str:
    """A session config entry, or "" where none was set (ONNX Runtime raises for those)."""
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:
        return ""


@pytest.mark.parametrize(("spinning", "between", "allow", "stop"), [
    (False, False, "0", ""), (True, False, "", "1"), (True, True, "", "")], ids=["off", "run", "on"])
def test_spinning_modes_set_onnx_runtimes_switches(tmp_path, spinning, between, allow, stop):
    write_artifact(tmp_path)
    options = open_session(tmp_path / MODEL_FILE, intra_op_threads=2, intra_op_spinning=spinning,
                           spin_between_runs=between).get_session_options()
    assert _entry(options, "session.intra_op.allow_spinning") == allow
    assert _entry(options, "session.force_spinning_stop") == stop


def test_spinning_measured_at_start_keeps_the_session_it_reports(tmp_path, caplog):
    manifest = write_artifact(tmp_path)
    with caplog.at_level(logging.INFO, logger="graft.artifact.runtime"):
        runner = Runner(tmp_path, manifest, buckets=(1, 8), providers=("CPUExecutionProvider",), intra_op_threads=2,
                        trt_cache_dir=tmp_path / "trt", intra_op_spinning=None)
    line = next(r.getMessage() for r in caplog.records if "batch-1 median" in r.getMessage())
    asleep = _entry(runner.session.get_session_options(), "session.intra_op.allow_spinning") == "0"
    assert ("sleep when idle" in line) == asleep
