"""The run directory's checkpoint: a trained `Backbone` plus everything needed to rebuild it.

`checkpoint.pt` holds the backbone name, the full state dict (trunk and head), the labels in output
order, the preprocessing spec (an image run) or the text spec (a text run, whose run dir also holds
its `tokenizer.json`) and where the starting weights came from. Export reads only these files.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from graft.artifact.errors import GraftError
from graft.artifact.preprocessing import PreprocessingSpec
from graft.artifact.text import TextSpec
from graft.models.backbones import get_backbone
from graft.models.modules import Backbone

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(GraftError):
    """A checkpoint that is missing, unreadable, or disagrees with itself."""


@dataclass(frozen=True)
class Checkpoint:
    """A trained classifier as saved in a run dir."""

    backbone: str
    labels: list[str]
    preprocessing: PreprocessingSpec | None
    state_dict: dict[str, torch.Tensor]
    weights_source: str
    pretrained: bool
    strategy: str
    extra: dict[str, Any] = field(default_factory=dict)
    text: TextSpec | None = None
    """A text run's tokenisation (its `preprocessing` is None)."""

    def build(self) -> Backbone:
        """Rebuild the backbone with this checkpoint's head and weights, in eval mode.

        Raises:
            CheckpointError: the head size disagrees with the labels, or the weights do not fit.
        """
        head = self.state_dict.get("head.weight")
        if head is None or head.shape[0] != len(self.labels):
            rows = None if head is None else head.shape[0]
            raise CheckpointError(
                f"expected a head with {len(self.labels)} outputs (one per label), got {rows}"
            )
        model, _ = get_backbone(self.backbone).create(weights="none")
        model.reset_head(len(self.labels))
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as error:
            raise CheckpointError(
                f"expected a checkpoint of backbone {self.backbone!r}, got weights that do not fit it: "
                f"{str(error).splitlines()[0]}"
            ) from None
        return model.eval()


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write atomically: a temp file in the same directory, then rename."""
    path = Path(path)
    payload = asdict(checkpoint)
    for key in ("preprocessing", "text"):  # plain dicts: torch's weights_only loader takes no classes
        spec = getattr(checkpoint, key)
        payload[key] = None if spec is None else asdict(spec)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file or a run dir holding `checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"expected a graft run dir or {CHECKPOINT_FILE}, got {path} which does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["preprocessing"] is not None:
            payload["preprocessing"] = PreprocessingSpec(**payload["preprocessing"])
        if payload.get("text") is not None:
            payload["text"] = TextSpec(**payload["text"])
        return Checkpoint(**payload)
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"expected a graft checkpoint in {path}, got an unreadable one: {error}") from None
