"""Transfer learning: `feature-extract`, `fine-tune` and `scratch`, each ending in a complete run dir.

- feature-extract: the pretrained trunk stays frozen. Embeddings of the training and evaluation
  images are computed once (eval preprocessing, cached on disk) and a linear head is fitted on
  them by `graft.artifact.head_fit.fit_softmax`, the fit `POST /heads` runs (softmax regression on
  standardised features, L-BFGS to convergence: no epochs, learning rate or seed), the
  standardisation then folded into the head's weights so the checkpoint is a plain `Backbone`.
- fine-tune: the same head fit as a warm-up (on the cached frozen features; a converged linear
  probe is the start that least disturbs the pretrained features once they train),
  then the last `unfreeze` blocks and everything after them train with augmentation for `epochs`,
  the backbone at `BACKBONE_LR_FACTOR` times the head's learning rate. BatchNorm layers stay in
  eval mode (running statistics frozen; their affine weights train where unfrozen): batches of a
  few dozen small-data images give noisy statistics that would drift the pretrained features away
  from what the warmed-up head was trained on, and frozen statistics keep training and evaluation
  behaviour identical.
- scratch: the same architecture from random init, all layers trained (BatchNorm in train mode:
  there are no statistics to keep, and they are recomputed exactly over the training images at the
  end, see `recompute_batchnorm_stats`) for the same `epochs` on the same images: the baseline
  that shows what transfer buys.

A text encoder's run (`models.text_data`: CSV/JSONL files, the encoder's tokenizer) goes through the
same steps and loop: its batches are token ids and attention masks, padded per batch, instead of
pixels; it has no BatchNorm and no feature cache (a text set embeds in seconds to minutes).

Evaluation of an image run always runs the model on `artifact.preprocessing.preprocess` outputs. The history has one
entry for the head fit (training and evaluation loss and accuracy on the cached embeddings) and one
per epoch of full-network training, evaluated once at the end, where each pass over the evaluation
split costs as much as training on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from graft.artifact.errors import GraftError
from graft.artifact.head_fit import fit_softmax
from graft.artifact.outputs import atomic_directory, check_output_dir
from graft.artifact.preprocessing import PreprocessingSpec
from graft.artifact.text import TOKENIZER_FILE
from graft.models.backbones import BackboneEntry, get_backbone
from graft.models.checkpoint import CHECKPOINT_FILE, Checkpoint, save_checkpoint
from graft.models.data import ImageSet, Splits, load_splits
from graft.models.evaluate import classification_report
from graft.models.features import EvalInputs, Inference, TrainInputs, cached_embeddings, loader, to_device
from graft.models.modules import Backbone
from graft.models.plots import plot_confusion, plot_curves
from graft.models.text import TextBackboneEntry
from graft.models.text_data import TextInputs
from graft.models.weights import describe_weights

log = logging.getLogger(__name__)

Strategy = Literal["feature-extract", "fine-tune", "scratch"]

BACKBONE_LR_FACTOR = 0.1
"""Fine-tune: backbone learning rate relative to the head's (pretrained features need small steps)."""
NETWORK_WEIGHT_DECAY = 0.05

# Network training's defaults for options the user leaves unset: (epochs, learning rate). A
# feature-extract run has neither: its head is one fit to convergence.
DEFAULTS: dict[str, tuple[int, float]] = {
    "fine-tune": (2, 1e-3),
    "scratch": (2, 1e-3),
}
DEFAULT_UNFREEZE = 3


class RunDirExists(GraftError):
    """`--out` exists and `--overwrite` was not given (or it is not a run dir we may replace)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything `graft train` was asked to do; stored in config.json."""

    backbone: str
    data: str
    strategy: Strategy
    out: Path
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    unfreeze: int | Literal["all"] = DEFAULT_UNFREEZE
    limit_train: int | None = None
    limit_val: int | None = None
    val: str | None = None
    """Text runs: the evaluation file (else a seeded share of `data` is held out)."""
    max_tokens: int | None = None
    """Text runs: cut texts to this many tokens (default: the encoder's limit)."""
    seed: int = 0
    device: str = "auto"
    weights: str = "pretrained"
    overwrite: bool = False
    workers: int = field(default_factory=lambda: min(4, (os.cpu_count() or 1) // 4))
    """Data-loading processes; each takes a core from the model's threads, so none on small machines."""

    @property
    def resolved_epochs(self) -> int | None:
        """Epochs of network training; None for feature-extract."""
        if self.strategy not in DEFAULTS:
            return None
        return self.epochs if self.epochs is not None else DEFAULTS[self.strategy][0]

    @property
    def resolved_lr(self) -> float | None:
        """Learning rate of network training (fine-tune's head, scratch's network); None for feature-extract."""
        if self.strategy not in DEFAULTS:
            return None
        return self.lr if self.lr is not None else DEFAULTS[self.strategy][1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GraftError("expected a CUDA GPU for --device cuda, got none on this machine; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` unless `overwrite`, and even then only a previous run dir or an empty dir."""
    check_output_dir(out, overwrite, marker="config.json", what="graft run dir", error=RunDirExists)


# ---- head on cached features -------------------------------------------------------------------
def fit_linear_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    num_classes: int,
    phase: str = "head",
) -> tuple[nn.Linear, dict]:
    """The head `fit_softmax` fits on embeddings, as an `nn.Linear` on raw embeddings (its
    standardisation folded in), and its history entry: one, since the fit has no epochs.

    The entry holds the data loss (cross-entropy without the penalty) and accuracy on the training
    embeddings and, given `val`, on the evaluation ones, and the L-BFGS iterations the fit took.
    """
    fitted = fit_softmax(train_x.numpy(), train_y.numpy(), num_classes)
    weight, bias = fitted.folded()
    head = nn.Linear(train_x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    entry = {"epoch": 1, "phase": phase, "phase_epoch": 1, "phase_epochs": 1,
             "lbfgs_iterations": fitted.iterations}
    measured = {"train": (train_x, train_y), **({"val": val} if val is not None else {})}
    for split, (x, y) in measured.items():
        with torch.no_grad():
            logits = head(x)
        entry[f"{split}_loss"] = F.cross_entropy(logits, y).item()
        entry[f"{split}_accuracy"] = (logits.argmax(1) == y).float().mean().item()
    log.info("%s (L-BFGS, %d iterations)", _progress_line(entry), fitted.iterations)
    return head, entry


def _progress_line(entry: dict) -> str:
    """'fine-tune 1/2: loss 0.41, accuracy 0.87': numbered within its phase, so a fine-tune's first
    epoch after its warm-up fit reads as its first, not the run's second entry."""
    line = (f"{entry['phase']} {entry['phase_epoch']}/{entry['phase_epochs']}: loss {entry['train_loss']:.4f}, "
            f"accuracy {entry['train_accuracy']:.4f}")
    if "val_accuracy" in entry:
        line += f"; evaluation loss {entry['val_loss']:.4f}, accuracy {entry['val_accuracy']:.4f}"
    return line


# ---- full-network training ---------------------------------------------------------------------
def set_trainable(model: Backbone, unfreeze: int | Literal["all"]) -> None:
    """Freeze the trunk except its last `unfreeze` blocks and any trunk layers after the last block.

    Layers between the last block and the head (e.g. timm's final BatchNorm) belong to the head
    side and always train with it.
    """
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    if unfreeze == "all":
        model.trunk.requires_grad_(True)
        return
    for block in model.blocks[len(model.blocks) - unfreeze :]:
        block.requires_grad_(True)
    in_blocks = {id(p) for block in model.blocks for p in block.parameters()}
    last_block = {id(p) for p in model.blocks[-1].parameters()}
    params = list(model.trunk.parameters())
    after = max(i for i, p in enumerate(params) if id(p) in last_block) + 1
    for param in params[after:]:
        if id(param) not in in_blocks:
            param.requires_grad_(True)


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: use and keep the pretrained running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def recompute_batchnorm_stats(model: Backbone, images, spec: PreprocessingSpec, *, device: torch.device,
                              batch_size: int, workers: int) -> None:
    """Replace BatchNorm running statistics by exact averages over `images` (eval inputs).

    After a short training from random init the running (exponential) averages lag far behind
    weights that moved fast, and eval mode then predicts one class; one extra forward pass over the
    training images fixes that ("precise BN"). Only BatchNorm layers run in train mode here, so
    dropout and stochastic depth stay off.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches that follow
        norm.train()
    for inputs, _ in tqdm(loader(EvalInputs(images, spec), batch_size, workers), desc="BatchNorm statistics",
                          unit="batch", leave=False):
        model.trunk(to_device(inputs, device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def train_network(
    model: Backbone,
    batches: DataLoader,
    config: TrainConfig,
    device: torch.device,
    *,
    param_groups: list[dict],
    frozen_bn: bool,
    first_epoch: int,
    phase: str,
) -> list[dict]:
    """Train `model` end to end on `batches` (augmented images, or token ids and their mask) for
    `config.resolved_epochs`; return the history."""
    epochs = config.resolved_epochs or 0
    optimizer = torch.optim.AdamW(param_groups, weight_decay=NETWORK_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in param_groups], total_steps=max(epochs * len(batches), 1),
        pct_start=0.15,
    )
    history = []
    for number, epoch in enumerate(range(first_epoch, first_epoch + epochs), start=1):
        model.train()
        if frozen_bn:
            freeze_batchnorm_stats(model)
        total_loss, correct, seen = 0.0, 0, 0
        progress = tqdm(batches, desc=f"{phase} {number}/{epochs}", unit="batch", leave=False)
        for inputs, targets in progress:
            targets = targets.to(device)
            logits, _ = model(*_on_device(inputs, device))
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            progress.set_postfix(loss=f"{total_loss / seen:.3f}")
        history.append({"epoch": epoch, "phase": phase, "phase_epoch": number, "phase_epochs": epochs,
                        "train_loss": total_loss / seen, "train_accuracy": correct / seen})
        log.info("%s", _progress_line(history[-1]))
    return history


def _on_device(inputs: torch.Tensor | Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch's model inputs: (pixels,) or (input_ids, attention_mask)."""
    if isinstance(inputs, torch.Tensor):
        return (to_device(inputs, device),)
    return tuple(tensor.to(device) for tensor in inputs)


class ImageSide:
    """An image run's side of `run_training`: a folder or Fashion-MNIST, eval inputs from
    `artifact.preprocessing`, augmented training inputs, frozen embeddings cached on disk."""

    def __init__(self, entry: BackboneEntry, device: torch.device):
        self.name, self.spec, self.device = entry.name, entry.preprocessing, device

    def load(self, config: TrainConfig) -> Splits:
        return load_splits(config.data, seed=config.seed, limit_train=config.limit_train,
                           limit_val=config.limit_val, min_side=self.spec.resize_size)

    def embeddings(self, model: Backbone, sets: dict[str, ImageSet], weights_path: str | None,
                   batching: dict) -> dict[str, torch.Tensor]:
        """The frozen trunk's embedding of every set, by name; one inference route for all of them."""
        embedder = Inference(model, "embedding", self.spec, device=self.device,
                             num_images=sum(len(images) for images in sets.values()))
        if weights_path is None:  # a seeded random trunk: nothing worth a cache entry
            return {name: embedder(images, desc=f"embedding {name} images", **batching) for name, images in sets.items()}
        return {name: cached_embeddings(embedder, self.name, weights_path, images, name=name, **batching)
                for name, images in sets.items()}

    def train_batches(self, images: ImageSet, config: TrainConfig) -> DataLoader:
        return loader(TrainInputs(images, self.spec), config.batch_size, config.workers, shuffle=True, seed=config.seed)

    def logits(self, model: Backbone, images: ImageSet, batching: dict) -> torch.Tensor:
        return Inference(model, "logits", self.spec, device=self.device, num_images=len(images))(
            images, desc="evaluating", **batching)


class TextSide:
    """A text run's side of `run_training`, over `TextInputs`: no feature cache (a text set embeds in minutes at most)."""

    def __init__(self, entry: TextBackboneEntry, config: TrainConfig, device: torch.device):
        self.inputs = TextInputs(entry, config.max_tokens, device)

    def load(self, config: TrainConfig) -> Splits:
        return self.inputs.load(config.data, config.val, seed=config.seed, limit_train=config.limit_train,
                                limit_val=config.limit_val)

    def embeddings(self, model: Backbone, sets: dict, weights_path: str | None, batching: dict) -> dict[str, torch.Tensor]:
        return {name: self.inputs.outputs(model, texts, "embedding", batch_size=batching["batch_size"],
                                          desc=f"embedding {name} texts") for name, texts in sets.items()}

    def train_batches(self, texts, config: TrainConfig) -> DataLoader:
        return self.inputs.train_batches(texts, config.batch_size, config.seed)

    def logits(self, model: Backbone, texts, batching: dict) -> torch.Tensor:
        return self.inputs.outputs(model, texts, "logits", batch_size=batching["batch_size"], desc="evaluating")


# ---- one run -----------------------------------------------------------------------------------
def run_training(config: TrainConfig) -> dict:
    """Train as `config` says and write the run dir; return its metrics.

    The run is written into a hidden temp dir beside `config.out` and renamed at the end, so a
    failure (or Ctrl-C) leaves no half-written run dir.

    Raises:
        GraftError: bad data, unknown backbone, unavailable weights, an existing run dir.
    """
    started = time.perf_counter()
    out = Path(config.out)
    check_out(out, config.overwrite)
    entry = get_backbone(config.backbone)  # unknown names fail before any work
    if config.strategy not in get_args(Strategy):
        raise GraftError(f"expected a strategy in {get_args(Strategy)}, got {config.strategy!r}")
    if isinstance(entry, BackboneEntry) and (config.val, config.max_tokens) != (None, None):
        raise GraftError(f"expected --val and --max-tokens with a text encoder only, got them for the image "
                         f"backbone {entry.name!r} (an image folder holds its evaluation set in val/)")
    if config.strategy == "feature-extract" and (config.epochs, config.lr) != (None, None):
        log.warning("feature-extract fits its head to convergence (L-BFGS): --epochs and --lr apply to "
                    "fine-tune and scratch only, ignored here")
    if config.unfreeze != "all" and config.unfreeze < 0:
        raise GraftError(f"expected --unfreeze N >= 0 or 'all', got {config.unfreeze}")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    side: ImageSide | TextSide = (ImageSide(entry, device) if isinstance(entry, BackboneEntry)
                                   else TextSide(entry, config, device))
    timings: dict[str, float] = {}

    splits = side.load(config)
    timings["data_s"] = time.perf_counter() - started

    weights = "none" if config.strategy == "scratch" else config.weights
    model, weights_path = entry.create(weights=weights)
    # Provenance names the package (or file name), version and hash, never this machine's path;
    # the path itself only keys the local feature cache.
    weights_source, weights_sha256 = describe_weights(weights_path)
    model.reset_head(len(splits.labels))
    model = model.to(device).to(memory_format=torch.channels_last)
    log.info("%s: %s, weights %s, on %s", config.strategy, config.backbone, weights_source, device)
    train_y = torch.from_numpy(splits.train.targets)
    val_y = torch.from_numpy(splits.val.targets)
    batching = dict(batch_size=config.batch_size, workers=config.workers)

    history: list[dict] = []
    val_logits: torch.Tensor | None = None
    if config.strategy in ("feature-extract", "fine-tune"):
        tick = time.perf_counter()
        model.eval()
        sets = {"training": splits.train, **({"evaluation": splits.val} if config.strategy == "feature-extract" else {})}
        embedded = side.embeddings(model, sets, None if weights == "none" else weights_path, batching)
        train_x, val_x = embedded["training"], embedded.get("evaluation")
        del embedded  # frees the ONNX Runtime session and its arena before the head is fitted
        timings["embed_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        head, fitted = fit_linear_head(
            train_x, train_y, None if val_x is None else (val_x, val_y), num_classes=len(splits.labels),
            phase="head" if config.strategy == "feature-extract" else "warm-up",
        )
        history.append(fitted)
        timings["head_s"] = time.perf_counter() - tick
        if val_x is not None:
            with torch.no_grad():
                val_logits = head(val_x)
        model.head = head.to(device)

    if config.strategy in ("fine-tune", "scratch"):
        tick = time.perf_counter()
        lr = config.resolved_lr or 0.0
        if config.strategy == "fine-tune":
            set_trainable(model, config.unfreeze)
            trunk = [p for p in model.trunk.parameters() if p.requires_grad]
            groups = [{"params": list(model.head.parameters()), "lr": lr}]
            if trunk:
                groups.append({"params": trunk, "lr": lr * BACKBONE_LR_FACTOR})
        else:
            groups = [{"params": list(model.parameters()), "lr": lr}]
        history += train_network(
            model, side.train_batches(splits.train, config), config, device, param_groups=groups,
            frozen_bn=config.strategy == "fine-tune", first_epoch=len(history) + 1, phase=config.strategy,
        )
        if config.strategy == "scratch" and isinstance(side, ImageSide):
            recompute_batchnorm_stats(model, splits.train, side.spec, device=device, **batching)
        timings["train_s"] = time.perf_counter() - tick
        model.eval()
        tick = time.perf_counter()
        val_logits = side.logits(model, splits.val, batching)
        timings["eval_s"] = time.perf_counter() - tick
        history[-1]["val_loss"] = F.cross_entropy(val_logits, val_y).item()
        history[-1]["val_accuracy"] = (val_logits.argmax(1) == val_y).float().mean().item()

    assert val_logits is not None  # every strategy evaluates (feature-extract above, the others after training)
    report = classification_report(splits.val.targets, val_logits.argmax(1).numpy(), splits.labels)
    timings["total_s"] = time.perf_counter() - started
    metrics = {**report, "strategy": config.strategy, "backbone": config.backbone,
               "num_train_images": len(splits.train),
               "train_images_per_class": {label: int(np.sum(splits.train.targets == i))
                                          for i, label in enumerate(splits.labels)},
               **_file_counts(splits),
               "timings": timings, "history": history}
    _write_run_dir(out, config, model, splits, side, weights_source, weights_sha256, metrics)
    log.info("accuracy %.4f on %d evaluation items; run dir %s", report["accuracy"], report["num_images"], out)
    return metrics


def _file_counts(splits: Splits) -> dict:
    return {"skipped_files": splits.skipped_files, "unreadable_files": list(splits.unreadable_files),
            "ignored_files": splits.ignored_files}


def _write_run_dir(out: Path, config: TrainConfig, model: Backbone, splits: Splits, side: ImageSide | TextSide,
                   weights_source: str, weights_sha256: str | None, metrics: dict) -> None:
    image_spec = side.spec if isinstance(side, ImageSide) else None
    text = side.inputs if isinstance(side, TextSide) else None
    with atomic_directory(out) as tmp:  # an existing `out` was vetted by check_out
        model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
        save_checkpoint(tmp / CHECKPOINT_FILE, Checkpoint(
            backbone=config.backbone,
            labels=list(splits.labels),
            preprocessing=image_spec,
            text=None if text is None else text.spec,
            state_dict={k: v.contiguous() for k, v in model.state_dict().items()},
            weights_source=weights_source,
            pretrained=config.strategy != "scratch",
            strategy=config.strategy,
            extra={"accuracy": metrics["accuracy"], "data": splits.source, "weights_sha256": weights_sha256},
        ))
        (tmp / "labels.json").write_text(json.dumps(list(splits.labels), indent=2) + "\n")
        # A text run keeps its tokenizer beside the checkpoint, so export needs nothing else.
        inputs: dict = {"preprocessing": asdict(image_spec)} if image_spec is not None else {}
        if text is not None:
            (tmp / TOKENIZER_FILE).write_bytes(text.tokenizer_json)
            inputs = {"text": asdict(text.spec), "tokenizer_sha256": hashlib.sha256(text.tokenizer_json).hexdigest()}
        run_config = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "epochs": config.resolved_epochs, "lr": config.resolved_lr,
            "backbone": config.backbone, "strategy": config.strategy,
            **inputs, "weights_source": weights_source, "weights_sha256": weights_sha256,
            "data": {"source": splits.source, "split": splits.split, "num_train": len(splits.train),
                     "num_eval": len(splits.val), **_file_counts(splits),
                     **({"val": str(Path(config.val).resolve())} if config.val else {})},
            "versions": {name: metadata.version(name) for name in ("graft", "torch", "torchvision", "timm")},
        }
        (tmp / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        title = f"{config.backbone} {config.strategy}"
        plot_curves(metrics["history"], tmp / "curves.png", title)
        plot_confusion(np.array(metrics["confusion_matrix"]), splits.labels, tmp / "confusion_matrix.png",
                       f"{title}: accuracy {metrics['accuracy']:.3f}")
