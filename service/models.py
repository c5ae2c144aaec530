"""Which artifacts the service runs: model references resolved to directories and manifests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from graft.artifact.errors import GraftError
from graft.artifact.manifest import Manifest, read_manifest
from graft.artifact.store import ArtifactNotFound, resolve_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One artifact as the service knows it: the name clients use, where it lives, its manifest."""

    name: str
    directory: Path
    manifest: Manifest

    def summary(self) -> dict:
        """What `GET /models` reports about this model (before the runtime adds its provider)."""
        manifest = self.manifest
        return {
            "name": self.name,
            "task": manifest.task,
            "backbone": manifest.backbone,
            "version": manifest.version,
            "num_labels": manifest.num_classes,
            "embedding_dim": manifest.embedding_dim,
            "modality": manifest.modality,
            "input_size": list(manifest.preprocessing.input_size) if manifest.preprocessing else None,
            "max_tokens": manifest.text.max_tokens if manifest.text else None,
            "precision": manifest.precision,
        }


def split_reference(reference: str) -> tuple[str, str]:
    """`NAME=DIR_OR_TAG` -> (NAME, DIR_OR_TAG); a plain `DIR_OR_TAG` -> ("", DIR_OR_TAG)."""
    name, sep, target = reference.partition("=")
    return (name, target) if sep else ("", reference)


def load_models(references: tuple[str, ...]) -> dict[str, ServedModel]:
    """Resolve `DIR_OR_TAG` or `NAME=DIR_OR_TAG` references, in order, keyed by served name.

    Raises:
        ArtifactNotFound: a reference resolves to nothing.
        ManifestError: an artifact's manifest is invalid.
        GraftError: no references, or two models under one name.
    """
    if not references:
        raise GraftError("expected at least one model to serve, got none")
    models: dict[str, ServedModel] = {}
    for reference in references:
        name, target = split_reference(reference)
        directory = resolve_artifact(target)
        manifest = read_manifest(directory)
        name = name or manifest.name
        if name in models:
            raise GraftError(
                f"expected unique model names, got {name!r} twice; serve one as NAME={target}"
            )
        models[name] = ServedModel(name, directory, manifest)
    return models


def pick_default(models: dict[str, ServedModel], default: str) -> str:
    """The default model's name: `default` if given (it must be served), else the first model."""
    if not default:
        return next(iter(models))
    if default not in models:
        raise ArtifactNotFound(f"expected the default model to be one of {sorted(models)}, got {default!r}")
    return default
