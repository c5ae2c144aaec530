"""Model inputs from an `ImageSet`, batched embedding extraction and its on-disk cache.

Evaluation inputs come only from `artifact.preprocessing.preprocess`, the function the service uses,
so what evaluation measures is what will be served. Training inputs add augmentation
(random resized crop + horizontal flip) and then normalise with `artifact.preprocessing.to_array`,
so mean and std come from the same spec.

Embeddings of a frozen backbone are cached under `$GRAFT_CACHE_DIR/features` (default
`~/.cache/graft/features`), one file per (backbone, weights, preprocessing, exact images) key:
a second run over the same data reuses them and skips the expensive forward passes.

Inference over many images on CPU (embedding, evaluation) runs the model's ONNX graph on ONNX
Runtime (`models.onnx_graph`), about 3x faster than PyTorch eager there; on GPU it stays PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, RandomHorizontalFlip, RandomResizedCrop
from tqdm import tqdm

from graft.artifact.preprocessing import PreprocessingSpec, preprocess, to_array
from graft.models.data import ImageSet
from graft.models.modules import Backbone
from graft.models.onnx_graph import BackboneOutputs, OnnxRuntimeModel, to_onnx

log = logging.getLogger(__name__)

TRAIN_CROP_SCALE = (0.25, 1.0)
"""RandomResizedCrop area range: milder than the ImageNet (0.08, 1) because small data sets and
small objects (a 28 px garment) lose the object at 8% of the area."""


def cache_dir() -> Path:
    return Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graft")) / "features"


class EvalInputs(Dataset):
    """(preprocessed float32 CHW array, target) via `artifact.preprocessing.preprocess`."""

    def __init__(self, images: ImageSet, spec: PreprocessingSpec):
        self.images, self.spec = images, spec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image = self.images.image(index, min_side=self.spec.resize_size)
        return preprocess(image, self.spec), int(self.images.targets[index])


class TrainInputs(Dataset):
    """(augmented, normalised float32 CHW array, target) for fine-tune and scratch training."""

    def __init__(self, images: ImageSet, spec: PreprocessingSpec):
        self.images, self.spec = images, spec
        height, width = spec.input_size
        self.crop = RandomResizedCrop(
            (height, width), scale=TRAIN_CROP_SCALE, interpolation=InterpolationMode(spec.interpolation)
        )
        self.flip = RandomHorizontalFlip()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image: Image.Image = self.images.image(index, min_side=self.spec.resize_size).convert("RGB")
        return to_array(self.flip(self.crop(image)), self.spec), int(self.images.targets[index])


def loader(dataset: Dataset, batch_size: int, workers: int, *, shuffle: bool = False, seed: int = 0,
           collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader whose shuffling and per-worker augmentation RNG derive from `seed` (repeatable runs)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        collate_fn=collate_fn,
    )


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last roughly doubles CPU conv throughput for these backbones (oneDNN's native layout).
    return batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


ONNX_MIN_IMAGES = 512
"""From this many images on, CPU inference goes through ONNX Runtime: its ~3x speed over PyTorch
eager pays back the ~15 s export (Lite0, 2 cores) from about 500 images."""

Backend = Literal["auto", "torch", "onnxruntime"]


class Inference:
    """`backbone`'s `output` (eval mode) for image sets, by the fastest route here.

    ONNX Runtime on CPU when the expected `num_images` reach `ONNX_MIN_IMAGES`, PyTorch otherwise
    (or when the export fails: that only costs speed). The route is built on first use and kept, so
    the training and evaluation embeddings of one frozen trunk share one export. Do not reuse an
    instance after the backbone's weights change: the exported graph would not follow them.
    """

    def __init__(self, backbone: Backbone, output: Literal["logits", "embedding"], spec: PreprocessingSpec, *,
                 device: torch.device, num_images: int, backend: Backend = "auto"):
        self.backbone, self.output, self.spec, self.device = backbone, output, spec, device
        if backend == "auto":
            backend = "onnxruntime" if device.type == "cpu" and num_images >= ONNX_MIN_IMAGES else "torch"
        self.backend = backend

    @cached_property
    def _run(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.backend == "onnxruntime":
            try:
                return OnnxRuntimeModel(to_onnx(self.backbone, self.spec.input_size, (self.output,)))
            except Exception as error:  # noqa: BLE001 - any exporter failure only costs speed
                log.warning("ONNX export of %s failed (%s); running PyTorch eager instead", self.backbone.name, error)
        module = BackboneOutputs(self.backbone, (self.output,)).eval()

        @torch.inference_mode()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return module(to_device(batch, self.device)).float().cpu()

        return run

    def __call__(self, images: ImageSet, *, batch_size: int, workers: int, desc: str) -> torch.Tensor:
        """The output for every image's eval input, batched: float32 [N, D] on CPU.

        NOTE: each batch's output is copied into one preallocated array and dropped at once, so
        memory is the batch plus the outputs. ONNX Runtime returns its outputs as views of memory
        it owns; keeping every batch's view alive until a final concatenation made training's
        memory grow with the number of images, far beyond the outputs' own size.
        """
        batches = loader(EvalInputs(images, self.spec), batch_size, workers)
        progress = tqdm(batches, desc=desc, unit="batch", leave=False)
        out: torch.Tensor | None = None
        start = 0
        for inputs, _ in progress:
            result = self._run(inputs)
            if out is None:
                out = torch.empty((len(images), *result.shape[1:]), dtype=torch.float32)
            out[start : start + len(result)] = result
            start += len(result)
            del result
        return out if out is not None else torch.empty((0, 0), dtype=torch.float32)


def _cache_key(backbone: str, weights_source: str, spec: PreprocessingSpec, images: ImageSet) -> str:
    source = Path(weights_source)
    # A weights file is identified by path, size and mtime, so replacing it invalidates the cache.
    weights_id = f"{source}:{source.stat().st_size}:{source.stat().st_mtime_ns}" if source.is_file() else weights_source
    key = json.dumps(
        {"backbone": backbone, "weights": weights_id, "spec": asdict(spec), "images": images.fingerprint()},
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def cached_embeddings(
    embed: Inference,
    backbone: str,
    weights_source: str,
    images: ImageSet,
    *,
    batch_size: int,
    workers: int,
    name: str,
) -> torch.Tensor:
    """Embeddings of `images` by `embed` (a frozen pretrained trunk), from the disk cache when present.

    Only valid for an unmodified pretrained (or --weights file) trunk: the key does not cover
    trained trunk weights, so callers must not use it after fine-tuning.
    """
    path = cache_dir() / f"{backbone}-{_cache_key(backbone, weights_source, embed.spec, images)}.pt"
    if path.is_file():
        try:
            embeddings = torch.load(path, map_location="cpu", weights_only=True)
            if embeddings.shape[0] == len(images):
                log.info("reusing cached %s embeddings %s", name, path)
                return embeddings
        except (RuntimeError, EOFError, OSError) as error:
            log.warning("ignoring unreadable feature cache %s: %s", path, error)
    embeddings = embed(images, batch_size=batch_size, workers=workers, desc=f"embedding {name} images")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(embeddings, tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written cache file
    log.info("cached %s embeddings in %s", name, path)
    return embeddings
