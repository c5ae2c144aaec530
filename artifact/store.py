"""Artifact references as users write them: a directory holding `manifest.json`, or a tag in the
local BentoML model store (what `graft register` and the Bento use)."""

from __future__ import annotations

from pathlib import Path

from graft.artifact.errors import GraftError
from graft.artifact.manifest import MANIFEST_FILE


class ArtifactNotFound(GraftError, LookupError):
    """A reference names neither an artifact directory nor a model in the BentoML store."""


def is_store_tag(reference: str) -> bool:
    """Whether `resolve_artifact` looks `reference` up in the BentoML model store (not on disk)."""
    return not Path(reference).expanduser().exists() and "/" not in reference


def resolve_artifact(reference: str) -> Path:
    """The artifact directory `reference` names: a path (with `manifest.json`) or a model-store tag.

    Raises:
        ArtifactNotFound: a path without a manifest, or a tag the local store does not hold.
    """
    path = Path(reference).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return path
    if not is_store_tag(reference):
        raise ArtifactNotFound(f"expected an artifact directory with {MANIFEST_FILE}, got {reference}")
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return Path(bentoml.models.get(reference).path)
    except (BentoMLException, ValueError) as error:  # ValueError: not even a valid tag
        raise ArtifactNotFound(
            f"expected an artifact directory or a BentoML model tag, got {reference!r} ({error})"
        ) from None
