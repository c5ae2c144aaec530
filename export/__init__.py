"""PyTorch -> ONNX artifacts: export, `onnx.checker`, the parity gate and BentoML registration.

An artifact is a directory with `model.onnx` and `manifest.json` (see `artifact.manifest`). The public
functions are imported lazily, so `graft_cli` can import `export.cli` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.api import export_backbone, export_run
    from export.errors import ExportError, OutputExists, ParityError, RegistrationError
    from export.register import register_artifact

_LAZY = {
    "export_backbone": "export.api",
    "export_run": "export.api",
    "register_artifact": "export.register",
    "ExportError": "export.errors",
    "OutputExists": "export.errors",
    "ParityError": "export.errors",
    "RegistrationError": "export.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
