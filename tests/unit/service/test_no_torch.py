"""The serving path never imports torch, checked in fresh interpreters: as a worker starts, and as a
serving-only install runs this folder's tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


@pytest.mark.parametrize("imports, forbidden", [
    # what a BentoML worker imports: nothing from the training side at all
    ("import graft.service.app, graft.artifact.runtime", ("torch", "torchvision", "timm", "onnx", "graft.models", "graft.export")),
    # `graft serve` builds the whole CLI (every package's cli module), still without torch
    ("import graft.cli; graft.cli.build_parser()", ("torch", "torchvision", "timm")),
], ids=["service", "graft-cli"])
def test_the_serving_path_loads_no_torch(tiny_classifier, imports, forbidden):
    code = (
        f"import sys; {imports}; "
        f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r})); "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"GRAFT_MODELS": str(tiny_classifier), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_the_service_tests_pass_without_the_training_packages():
    """This folder's tests in a fresh interpreter where the `train` extra cannot be imported, as a
    serving-only install (`graft[cpu]` and the `test` extra) runs them."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GRAFT_", "PROMETHEUS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.serving_only", "-p", "no:cacheprovider", "-q",
         "-m", "not slow", str(HERE)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-1000:]
