"""Errors export reports to a user as one line (`GraftError` subclasses)."""

from graft.artifact.errors import GraftError


class ExportError(GraftError):
    """An export that cannot be done as asked; nothing was written."""


class OutputExists(ExportError):
    """The output directory exists and `overwrite` was not given (or it is not an artifact)."""


class ParityError(ExportError):
    """ONNX Runtime's outputs disagree with PyTorch's beyond the gate's tolerance."""


class RegistrationError(GraftError):
    """An artifact could not be imported into the BentoML model store."""


class QuantizationError(ExportError):
    """An INT8 graph disagrees with its FP32 graph beyond the accuracy gate's thresholds."""
