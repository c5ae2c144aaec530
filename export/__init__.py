"""PyTorch -> ONNX artifacts: export, `onnx.checker`, the parity gate and BentoML registration.

An artifact is a directory with `model.onnx` and `manifest.json` (see `artifact.manifest`). The public
functions are imported lazily, so `graft.cli` can import `export.cli` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graft.export.api import export_backbone, export_run
    from graft.export.errors import ExportError, OutputExists, ParityError, RegistrationError
    from graft.export.head import export_head
    from graft.export.register import register_artifact

_LAZY = {
    "export_backbone": "graft.export.api",
    "export_run": "graft.export.api",
    "export_head": "graft.export.head",
    "register_artifact": "graft.export.register",
    "ExportError": "graft.export.errors",
    "OutputExists": "graft.export.errors",
    "ParityError": "graft.export.errors",
    "RegistrationError": "graft.export.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
