"""`graft bench model`: one artifact as PyTorch eager and as ONNX Runtime, over batch sizes.

Each backbone is exported once with random weights (timing does not depend on weight values); PyTorch
loads the very state dict the ONNX graph was exported from, so both engines run the same model. The
engines are keyed on what this machine has: PyTorch CPU and ONNX Runtime CPU everywhere; with an
NVIDIA GPU also PyTorch CUDA FP32/FP16 and ONNX Runtime CUDA and TensorRT FP32/FP16. Inputs are host
arrays, so GPU figures include the host-to-device copy, as a server's would.

`ceiling` is the reference the service is held to: raw ONNX Runtime on already-preprocessed real
images, with the provider the service prefers, at the best batch size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from graft.artifact.image import load_image
from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.preprocessing import preprocess
from graft.benchmarks.stats import latency_summary

logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("tf_efficientnet_lite0", "resnet50")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)

Runner = Callable[[np.ndarray], object]


class EngineUnavailable(RuntimeError):
    """An engine this machine cannot run (its provider fell back to another one)."""


@dataclass(frozen=True)
class Timing:
    """How long each (engine, batch size) cell is measured: at least `min_iters` runs, then more
    until `budget_s` has passed or `max_iters` runs are done, after `warmup` untimed runs."""

    min_iters: int = 3
    max_iters: int = 50
    budget_s: float = 2.0
    warmup: int = 1


QUICK_TIMING = Timing(min_iters=2, max_iters=5, budget_s=0.3)


def measure(fn: Callable[[], object], timing: Timing) -> list[float]:
    """Wall-clock seconds of each timed call of `fn`."""
    for _ in range(timing.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < timing.max_iters and (
        len(times) < timing.min_iters or time.perf_counter() - start < timing.budget_s
    ):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return times


def sweep(engine: str, run: Runner, inputs: dict[int, np.ndarray], timing: Timing, progress: tqdm) -> list[dict]:
    """Time `run` on each batch of `inputs` (batch size -> array); one figures row per batch size."""
    rows = []
    for batch_size, array in inputs.items():
        progress.set_postfix_str(f"{engine} batch {batch_size}")
        times = measure(partial(run, array), timing)
        latency = latency_summary(times)
        rows.append({
            "engine": engine,
            "batch_size": batch_size,
            "iterations": len(times),
            "latency_ms": latency,
            "images_per_s": batch_size / (latency["p50"] / 1e3),
        })
        progress.update()
    return rows


# ---- engines ------------------------------------------------------------------------------------
def _ort_runner(model_path: Path, providers: list[tuple[str, dict]]) -> Runner:
    from graft.artifact.runtime import open_session

    # log_severity_level 3: a provider that cannot load is reported below, once.
    session = open_session(model_path, providers=providers, log_severity_level=3)
    if session.get_providers()[0] != providers[0][0]:
        raise EngineUnavailable(f"expected {providers[0][0]}, got {session.get_providers()}")
    input_name = session.get_inputs()[0].name
    return lambda array: session.run(None, {input_name: array})


def ort_engines(artifact: Path, cache_dir: Path) -> dict[str, Callable[[], Runner]]:
    """ONNX Runtime engines available here for `artifact`, in the service's order of preference (best
    first), each named by its provider and the precision its manifest records."""
    import onnxruntime as ort

    from graft.artifact.runtime import gpu_present, preload_gpu_libraries

    precision = read_manifest(artifact).precision
    model_path = artifact / MODEL_FILE
    engines: dict[str, Callable[[], Runner]] = {}
    available = ["CPUExecutionProvider"]
    if gpu_present():  # the same GPU check and CUDA/TensorRT libraries as the service
        preload_gpu_libraries()
        available = ort.get_available_providers()
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    if "TensorrtExecutionProvider" in available:
        # TensorRT can also build an FP32 graph in FP16 (`trt_fp16_enable`), a second engine; an FP16 or INT8
        # graph gets one engine, named by its own precision, with FP16 allowed where it keeps float32.
        for trt_precision in ("fp16", "fp32") if precision == "fp32" else (precision,):
            trt = ("TensorrtExecutionProvider", {
                "trt_fp16_enable": trt_precision != "fp32",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir / f"trt-{trt_precision}"),
            })
            engines[f"onnxruntime-tensorrt-{trt_precision}"] = partial(_ort_runner, model_path, [trt, cuda])
    if "CUDAExecutionProvider" in available:
        engines[f"onnxruntime-cuda-{precision}"] = partial(_ort_runner, model_path, [cuda])
    engines[f"onnxruntime-cpu-{precision}"] = partial(_ort_runner, model_path, [("CPUExecutionProvider", {})])
    return engines


def _torch_runner(backbone: str, weights: Path | str, device: str, half: bool) -> Runner:
    import torch

    from graft.models.backbones import get_backbone

    model, _ = get_backbone(backbone).create(weights=weights)
    model = model.eval().to(device)
    dtype = torch.float16 if half else torch.float32
    model = model.to(dtype)

    def run(array: np.ndarray) -> object:
        with torch.inference_mode():
            outputs = model(torch.from_numpy(array).to(device, dtype))
            if device == "cuda":
                torch.cuda.synchronize()
        return outputs

    return run


def torch_engines(backbone: str, weights: Path | str) -> dict[str, Callable[[], Runner]]:
    """PyTorch eager engines available here (`weights`: a state dict file, or "none" for random init)."""
    import torch

    engines: dict[str, Callable[[], Runner]] = {"pytorch-eager-cpu-fp32": partial(_torch_runner, backbone, weights, "cpu", False)}
    if torch.cuda.is_available():
        engines["pytorch-eager-cuda-fp32"] = partial(_torch_runner, backbone, weights, "cuda", False)
        engines["pytorch-eager-cuda-fp16"] = partial(_torch_runner, backbone, weights, "cuda", True)
    return engines


# ---- artifacts ----------------------------------------------------------------------------------
def random_artifact(backbone: str, folder: Path) -> tuple[Path, Path]:
    """Export `backbone` with one random initialisation, once; return (artifact dir, weights file).

    The weights file is the library model's state dict (what `--weights PATH` takes), so PyTorch
    and the ONNX graph hold identical parameters.
    """
    import torch

    from graft.export.api import export_backbone
    from graft.models.backbones import image_backbone

    out = folder / f"{backbone}-random"
    weights = folder / f"{backbone}-random.pt"
    if (out / "manifest.json").is_file() and weights.is_file():
        return out, weights
    entry = image_backbone(backbone)
    torch.manual_seed(0)
    model, _ = entry.create(weights="none")
    state = dict(model.trunk.state_dict())
    trunk: Any = model.trunk  # a timm model carries its pretrained_cfg
    head = entry.head_path or trunk.pretrained_cfg["classifier"]  # torchvision or timm
    state.update({f"{head}.{key}": value for key, value in model.head.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    logger.info("exporting %s with random weights to %s", backbone, out)
    export_backbone(backbone, out, weights=str(weights), overwrite=True)
    return out, weights


def _random_batches(shape: Sequence[int], batch_sizes: Iterable[int]) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {b: rng.standard_normal((b, *shape), dtype=np.float32) for b in batch_sizes}


def bench_models(
    backbones: Sequence[str],
    batch_sizes: Sequence[int],
    artifacts_dir: Path,
    timing: Timing = Timing(),
) -> list[dict]:
    """Every available engine on every backbone and batch size; one figures row per cell."""
    plans = []
    for backbone in backbones:
        artifact, weights = random_artifact(backbone, artifacts_dir)
        spec = read_manifest(artifact).image_spec
        engines = {**torch_engines(backbone, weights), **ort_engines(artifact, artifacts_dir)}
        plans.append((backbone, engines, _random_batches((3, *spec.input_size), batch_sizes)))
    rows: list[dict] = []
    total = sum(len(engines) * len(inputs) for _, engines, inputs in plans)
    with tqdm(total=total, desc="bench model", unit="cell") as progress:
        for backbone, engines, inputs in plans:
            for engine, build in engines.items():
                try:
                    run = build()
                except EngineUnavailable as error:
                    logger.warning("skipping %s: %s", engine, error)
                    progress.update(len(inputs))
                    continue
                for row in sweep(engine, run, inputs, timing, progress):
                    rows.append({"backbone": backbone, **row})
                del run  # free the model before the next engine loads its own
    return rows


def preprocessed_batches(artifact: Path, images: Sequence[Path], batch_sizes: Iterable[int]) -> dict[int, np.ndarray]:
    """Real images through the artifact's own decode and preprocessing, tiled to each batch size."""
    spec = read_manifest(artifact).image_spec
    arrays = np.stack([preprocess(load_image(path, min_side=spec.resize_size), spec) for path in images])
    return {b: np.ascontiguousarray(np.resize(arrays, (b, *arrays.shape[1:]))) for b in batch_sizes}


def ceiling(
    artifact: Path, images: Sequence[Path], batch_sizes: Sequence[int], cache_dir: Path, timing: Timing = Timing()
) -> dict:
    """Raw ONNX Runtime on preprocessed real images with the service's preferred provider.

    Returns {"engine", "rows": one row per batch size, "best": the row with the most images/s,
    "batch1": the batch-size-1 row (the model latency a single request cannot beat)}.
    """
    inputs = preprocessed_batches(artifact, images, sorted({1, *batch_sizes}))
    engines = ort_engines(artifact, cache_dir)
    for engine, build in engines.items():
        try:
            run = build()
        except EngineUnavailable as error:
            logger.warning("ceiling: skipping %s: %s", engine, error)
            continue
        with tqdm(total=len(inputs), desc="ceiling", unit="cell") as progress:
            rows = sweep(engine, run, inputs, timing, progress)
        return {
            "engine": engine,
            "rows": rows,
            "best": max(rows, key=lambda row: row["images_per_s"]),
            "batch1": next(row for row in rows if row["batch_size"] == 1),
        }
    raise EngineUnavailable("no ONNX Runtime provider could run the artifact")
