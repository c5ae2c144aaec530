"""The serving path never imports torch: checked in a fresh interpreter, as a worker would start."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


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
