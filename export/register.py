"""Import an artifact directory into the BentoML model store, so `bentoml build` can bundle it.

The BentoML model holds the same two files (`model.onnx`, `manifest.json`); its labels and metadata
carry a summary of the manifest so `bentoml models list/get` shows what it is. The store location
follows BentoML's own `BENTOML_HOME`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from graft.artifact.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, read_manifest, verify_model_hash
from graft.export.errors import RegistrationError

log = logging.getLogger(__name__)


def summary(manifest: Manifest) -> dict:
    """The manifest's headline figures, as BentoML model metadata (plain JSON types; BentoML refuses
    None, so what an artifact lacks, an embedder's class count, is left out)."""
    figures = {
        "task": manifest.task,
        "backbone": manifest.backbone,
        "version": manifest.version,
        "precision": manifest.precision,
        "embedding_dim": manifest.embedding_dim,
        "num_classes": manifest.num_classes,
        "labels": list(manifest.labels),
        "sha256_model": manifest.sha256["model"],
        "pretrained": manifest.weights.pretrained,
        "created_at": manifest.created_at,
        "schema_version": manifest.schema_version,
        "parity_top1_agreement": {k: v.top1_agreement for k, v in manifest.parity.items() if v.top1_agreement is not None},
    }
    return {key: value for key, value in figures.items() if value is not None}


def register_artifact(directory: str | os.PathLike) -> str:
    """Copy an artifact into the BentoML model store as `<name>:<version>`; return the tag.

    Registering the same artifact again returns the existing tag.

    Raises:
        ManifestError: the directory is not a valid artifact, or model.onnx does not match its hash.
        RegistrationError: the store holds a different model under the same tag.
    """
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_model_hash(directory, manifest)
    tag = f"{manifest.name}:{manifest.version}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    except BentoMLException as error:  # e.g. a --name that is no valid tag
        raise RegistrationError(f"expected a valid BentoML model tag, got {tag!r}: {error}") from None
    if existing is not None:
        if existing.info.metadata.get("sha256_model") != manifest.sha256["model"]:
            raise RegistrationError(f"expected {tag} in the BentoML store to be this artifact, got a different model")
        log.info("%s is already in the BentoML model store", tag)
        return str(existing.tag)
    labels = {"task": manifest.task, "backbone": manifest.backbone, "precision": manifest.precision}
    try:
        with bentoml.models.create(tag, labels=labels, metadata=summary(manifest)) as model:
            for name in (MODEL_FILE, MANIFEST_FILE, *([manifest.text.tokenizer] if manifest.text else [])):
                shutil.copy2(directory / name, model.path_of(name))
    except bentoml.exceptions.BentoMLException as error:
        raise RegistrationError(f"expected BentoML to accept {tag}, got: {error}") from error
    return str(model.tag)
