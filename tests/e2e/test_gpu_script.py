"""benchmarks/gpu/run.sh on the CPU (`--dry-run`: the same stages with tiny sizes), so the script a lent
GPU runs keeps working between GPU runs: a bundle carried in two pieces, install, every stage, the
report; a failed stage is reported, and one stopped at its time limit takes its server down with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
SERVICE = "service-tf_efficientnet_lite0-fp32"


def _script(*args, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _probe_wheel(folder: Path) -> None:
    """A one-module wheel standing in for the carried ones."""
    info = "graft_gpu_probe-0.1.dist-info"
    files = {"graft_gpu_probe/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: graft-gpu-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    folder.mkdir()
    with zipfile.ZipFile(folder / "graft_gpu_probe-0.1-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def _stages(out: Path) -> dict[str, dict]:
    return {stage["name"]: stage for stage in json.loads((out / "report.json").read_text())["stages"]}


def test_dry_run_installs_carried_pieces_and_reports_every_stage(lite0_classifier, tmp_path):
    _probe_wheel(tmp_path / "wheels")
    _script(sys.executable, SCRIPTS / "prepare.py", "--wheels", tmp_path / "wheels", "--bundle", tmp_path / "bundle",
            "--pieces", "2", "--artifact", f"tf_efficientnet_lite0-fp32={lite0_classifier}")
    calls = {k: tmp_path / f"call-{k}" for k in (1, 2)}  # what each device command would carry
    for k, folder in calls.items():
        folder.mkdir()
        for piece in (tmp_path / "bundle" / "pieces").glob(f"*.{k}of2"):
            piece.rename(folder / piece.name)
    work, out = tmp_path / "work", tmp_path / "out"
    received = _script(SCRIPTS / "run.sh", "--receive", "--pieces", calls[1], "--work", work)
    assert "missing [2]" in received.stdout

    _script(SCRIPTS / "run.sh", "--dry-run", "--out", out, "--work", work, "--pieces", calls[2])

    stages = _stages(out)
    assert {name: stage["status"] for name, stage in stages.items()} == {
        name: "ok" for name in ("install", "device", "artifacts", SERVICE, "model", "tests")}
    carried = stages["install"]["result"]["bundle"]
    assert carried["wheels"] == ["graft_gpu_probe-0.1-py3-none-any.whl"]
    assert carried["artifacts"] == ["tf_efficientnet_lite0-fp32"]
    assert stages["artifacts"]["result"]["artifacts"][0]["made"] == "on disk"
    assert (work / "site" / "graft_gpu_probe").is_dir() and (work / "site" / "graft" / "service").is_dir()
    assert stages["device"]["result"]["sessions"][1]["got"] == ["CPUExecutionProvider"]
    service = stages[SERVICE]["result"]
    assert [s["which"] for s in service["starts"]] == ["cold", "warm"]
    assert all(s["all_ready_s"] >= s["first_ready_s"] > 0 for s in service["starts"])
    assert service["served"][0]["provider"] == "CPUExecutionProvider"
    assert [c["concurrency"] for c in service["cells"]] == [1, 2]
    for cell in service["cells"]:  # what the server ran between the scrapes: both load processes' requests
        executed = round(cell["batch"]["batches"] * cell["batch"]["mean"])
        assert cell["images_per_s"] > 0 and not cell["errors"]
        assert cell["requests"] <= executed <= cell["requests"] + cell["unfinished"]
    assert {row["engine"] for row in stages["model"]["result"]["rows"]} == {"pytorch-eager-cpu-fp32", "onnxruntime-cpu-fp32"}
    assert stages["tests"]["result"]["counts"]["skipped"] >= 1  # the gpu-marked tests, skipped without a GPU
    report = (out / "report.md").read_text()
    assert "## Targets" in report and f"## Service: {SERVICE.removeprefix('service-')}" in report
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert f"stages/{SERVICE}/server-cold.log" in logs.getnames()


def _servers_of(work: Path) -> list[psutil.Process]:
    """Processes started by a run in `work` (the service stage sets GRAFT_TRT_CACHE_DIR under it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("GRAFT_TRT_CACHE_DIR", "").startswith(str(work)):
                found.append(process)
        except psutil.Error:
            pass
    return found


def test_a_failed_or_stopped_stage_is_reported_and_leaves_no_server(lite0_classifier, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    _script(SCRIPTS / "run.sh", "--dry-run", "--out", out, "--work", work, "--stages", "artifacts",
            "--model", f"tf_efficientnet_lite0-fp32={tmp_path / 'missing'}")
    stages = _stages(out)
    assert stages["install"] == {**stages["install"], "status": "skipped", "reason": "not in --stages"}
    assert stages["artifacts"]["status"] == "failed" and "manifest.json" in stages["artifacts"]["reason"]
    assert "| artifacts | failed |" in (out / "report.md").read_text()

    # 42 s of budget leave the service stage about 12 s (30 s are kept for stopping and the
    # report): far less than two starts of a 4-worker server (each worker warms every batch size on 2
    # cores) and two load cells take.
    _script(SCRIPTS / "run.sh", "--dry-run", "--out", out, "--work", work, "--budget", "42", "--workers", "4",
            "--stages", SERVICE, "--model", f"tf_efficientnet_lite0-fp32={lite0_classifier}")
    stages = _stages(out)
    assert stages[SERVICE]["status"] == "timeout" and "limit" in stages[SERVICE]["reason"]
    assert stages["model"] == {**stages["model"], "status": "skipped"}
    assert not _servers_of(work)
