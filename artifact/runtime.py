"""Running an artifact on ONNX Runtime: providers, one session per artifact, batch buckets, warm-up.

The one place sessions for artifacts are built: the service, batch jobs and the benchmarks all use
`Runner`. It knows nothing about HTTP, queues or threads: `infer` takes the model's input batch
(what `graft.artifact.preprocessing.preprocess` makes) and returns the named outputs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ModuleNotFoundError as missing:  # graft's wheel leaves the runtime to an extra
    raise ModuleNotFoundError(
        "graft needs ONNX Runtime: pip install 'graft[cpu]', or 'graft[gpu]' on NVIDIA GPUs"
    ) from missing

from graft.artifact.manifest import MODEL_FILE, Manifest, verify_model_hash
from graft.artifact.postprocess import softmax

log = logging.getLogger(__name__)


_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
DEFAULT_PROVIDERS = (*_GPU_PROVIDERS, "CPUExecutionProvider")
"""The order the service and batch jobs try providers in; those ONNX Runtime lacks are skipped."""


CPU_RUN_LIMIT = 8
"""Most images one session run takes on the CPU provider; bigger batches run in chunks of this.

ONNX Runtime's CPU memory arena keeps what the largest run needed (batch 32 of Lite0: about 400 MB,
batch 8: about 90 MB), while the time per image on a CPU is flat from a few images on."""


SPIN_PAYS = 1.5
"""How much slower a batch-1 run must be with idle intra-op threads asleep than with them spinning
for a session to spin (`Runner`'s start-up choice): spinning takes cycles from decoding on the same
cores, so it has to save a third of the run time to pay for them."""
SPIN_PROBE_RUNS = 15


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines are kept between runs, unless configured."""
    return Path.home() / ".cache" / "graft" / "tensorrt"


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible (the driver's control device exists)."""
    return Path("/dev/nvidiactl").exists()


def preload_gpu_libraries() -> None:
    """Load CUDA 13, cuDNN 9 and TensorRT 10 from their pip wheels (`nvidia-*`, `tensorrt-cu13-libs`).

    onnxruntime-gpu 1.31 dlopens these by soname; installed as Python packages they are not on the
    loader path, so a container built from the Bento (no CUDA base image) finds them only this way.
    Missing libraries are left to ONNX Runtime, which then falls back to the next provider.
    """
    ort.preload_dlls(directory="")
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        for name in ("libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"):
            if (folder / name).exists():
                ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)


def session_providers(
    wanted: tuple[str, ...], *, trt_cache_dir: Path, input_name: str, input_shape: tuple[int, ...],
    max_batch: int,
) -> list[tuple[str, dict]]:
    """The wanted providers this ONNX Runtime build has, in order, each with its options.

    TensorRT caches built engines on disk (an engine takes minutes to build) and gets one
    optimisation profile covering every batch size; CUDA uses heuristic cuDNN algorithm search,
    because the default exhaustive search stalls hundreds of milliseconds on each new batch shape.
    """
    available = set(ort.get_available_providers())
    if not gpu_present():
        # onnxruntime-gpu lists GPU providers even without a GPU, then fails loudly trying them.
        available -= set(_GPU_PROVIDERS)
    elif available & set(wanted) & set(_GPU_PROVIDERS):
        preload_gpu_libraries()
    dims = "x".join(str(d) for d in input_shape)
    options: dict[str, dict[str, str | bool]] = {
        "TensorrtExecutionProvider": {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(trt_cache_dir),
            "trt_profile_min_shapes": f"{input_name}:1x{dims}",
            "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{dims}",
            "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
        },
        "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},
    }
    chosen = [(name, options.get(name, {})) for name in wanted if name in available]
    if not any(name == "CPUExecutionProvider" for name, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    if any(name == "TensorrtExecutionProvider" for name, _ in chosen):
        trt_cache_dir.mkdir(parents=True, exist_ok=True)
    return chosen


def open_session(
    model: Path | bytes, *, providers: Sequence = ("CPUExecutionProvider",), intra_op_threads: int = 0,
    intra_op_spinning: bool = False, spin_between_runs: bool = False, log_severity_level: int = 2,
    optimize: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session with the settings serving runs: every graph optimisation, one
    inter-op thread, idle intra-op threads asleep unless `intra_op_spinning`. The service, its
    start-up check, the export parity gate and the benchmarks all open sessions here, so the parity
    gate checks the configuration that serves.

    Args:
        model: a `model.onnx` path, or a serialised graph.
        providers: as `ort.InferenceSession` takes them (names, or (name, options) pairs).
        intra_op_threads: 0 lets ONNX Runtime use one per physical core.
        intra_op_spinning: idle intra-op threads busy-wait for their next task (between the
            operators of a run: waking a sleeping thread costs more on some CPUs than others).
        spin_between_runs: they busy-wait between runs too, not only while one is going.
        log_severity_level: ONNX Runtime's own log threshold (3: errors only).
        optimize: False only checks that the graph loads: optimising it (and pre-packing its
            weights) would leave the process holding about 40 MB more after the session is gone.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = log_severity_level
    if not intra_op_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif not spin_between_runs:
        # Threads still spinning after a run take the cores the service's decoding needs (on
        # 2 cores: 44 vs 29 CPU-ms per image at one client, when they spun between runs).
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options,
                                providers=list(providers))


def pick_spinning(opener: Callable[..., ort.InferenceSession], input_name: str, input_shape: tuple[int, ...],
                  name: str) -> ort.InferenceSession:
    """A CPU session whose idle intra-op threads spin during runs if that makes batch-1 runs
    `SPIN_PAYS` times faster here, else one whose threads sleep.

    Waking a sleeping thread between operators costs far more on some CPUs and hypervisors than on
    others, and spinning loses outright when other processes share the cores; so it is measured
    where the service runs: both sessions, interleaved, `SPIN_PROBE_RUNS` timed runs each.
    """
    asleep = opener(intra_op_spinning=False)
    if asleep.get_providers()[0] != "CPUExecutionProvider":
        return asleep
    spinning = opener(intra_op_spinning=True)
    feed = {input_name: np.zeros((1, *input_shape), np.float32)}
    seconds: dict[ort.InferenceSession, list[float]] = {asleep: [], spinning: []}
    for index in range(SPIN_PROBE_RUNS + 2):  # the first runs of a session are not what it settles at
        for session in (asleep, spinning):
            started = time.perf_counter()
            session.run(None, feed)
            if index >= 2:
                seconds[session].append(time.perf_counter() - started)
    slept, spun = statistics.median(seconds[asleep]), statistics.median(seconds[spinning])
    chosen = spinning if slept >= SPIN_PAYS * spun else asleep
    log.info("model %s: intra-op threads %s (batch-1 median %.1f ms asleep, %.1f ms spinning)", name,
             "spin during runs" if chosen is spinning else "sleep when idle", 1000 * slept, 1000 * spun)
    return chosen


class Runner:
    """One artifact's ONNX Runtime session.

    Args:
        directory: the artifact directory (holds `model.onnx`).
        manifest: its manifest (the model's hash is verified before the session is built).
        name: the name logs and metrics use; the manifest's name by default.
        buckets: batch sizes to pad to, ascending; the last is the largest batch run at once.
        providers: provider names to try, in order.
        intra_op_threads: ORT intra-op threads; 0 lets ORT use one per physical core.
        trt_cache_dir: TensorRT engine cache.
        pad_to_buckets: zero-pad batches to a bucket size; None pads on GPU providers only.
        intra_op_spinning, spin_between_runs: as `open_session` takes them; `intra_op_spinning=None`
            measures at start which way batch-1 runs are faster (`pick_spinning`).
    """

    def __init__(
        self, directory: Path, manifest: Manifest, *, name: str = "", buckets: tuple[int, ...], providers: tuple[str, ...],
        intra_op_threads: int, trt_cache_dir: Path, pad_to_buckets: bool | None = None,
        intra_op_spinning: bool | None = False, spin_between_runs: bool = False,
    ) -> None:
        verify_model_hash(directory, manifest)
        self.name = name or manifest.name
        self.manifest = manifest
        self.buckets = buckets
        self.input_name = manifest.io.input.name
        self.input_shape = (3, *manifest.image_spec.input_size)
        self.output_names = [output.name for output in manifest.io.outputs]
        started = time.perf_counter()
        opener = functools.partial(
            open_session, directory / MODEL_FILE, intra_op_threads=intra_op_threads, providers=session_providers(
                providers, trt_cache_dir=trt_cache_dir, input_name=self.input_name,
                input_shape=self.input_shape, max_batch=buckets[-1],
            ),
        )
        if intra_op_spinning is None:
            self.session = pick_spinning(opener, self.input_name, self.input_shape, self.name)
        else:
            self.session = opener(intra_op_spinning=intra_op_spinning, spin_between_runs=spin_between_runs)
        self.provider = self.session.get_providers()[0]
        # NOTE: TensorRT builds an engine and cuDNN picks algorithms per input shape, so GPU batches
        # are padded to warmed buckets. On the CPU provider cost grows with the batch and nothing is
        # compiled per shape: padding there only burns cores (measured by `graft bench service`).
        self.pad = self.provider != "CPUExecutionProvider" if pad_to_buckets is None else pad_to_buckets
        self.run_limit = buckets[-1] if self.provider != "CPUExecutionProvider" else min(buckets[-1], CPU_RUN_LIMIT)
        log.info("model %s: session on %s in %.2fs", self.name, self.provider, time.perf_counter() - started)

    def bucket(self, n: int) -> int:
        """The smallest bucket holding `n` items (the largest bucket if none does)."""
        return next((size for size in self.buckets if size >= n), self.buckets[-1])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a [N, 3, H, W] float32 batch; return each output's [N, ...] array.

        Batches are run in chunks of `run_limit` (the largest bucket; on the CPU provider at most
        `CPU_RUN_LIMIT`) if bigger; with `pad` each chunk is zero-padded to a bucket so a GPU session
        only ever sees warmed shapes.
        """
        if batch.shape[1:] != self.input_shape:
            raise ValueError(f"expected inputs of shape [N, {', '.join(map(str, self.input_shape))}], got {list(batch.shape)}")
        step = self.run_limit
        chunks = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            size = self.bucket(len(chunk)) if self.pad else len(chunk)
            if size != len(chunk):
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *self.input_shape), np.float32)])
            outputs = self.session.run(self.output_names, {self.input_name: chunk})
            chunks.append([output[: min(step, len(batch) - start)] for output in outputs])
        return {
            name: np.concatenate([chunk[i] for chunk in chunks]).astype(np.float32, copy=False)
            for i, name in enumerate(self.output_names)
        }

    @staticmethod
    def postprocess(outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One result per item: `embedding`, and for classifiers `logits` and `probabilities`
        (their softmax)."""
        results = dict(outputs)
        if "logits" in outputs:
            results["probabilities"] = softmax(outputs["logits"])
        count = len(outputs["embedding"])
        return [{key: value[i] for key, value in results.items()} for i in range(count)]

    def warmup(self) -> None:
        """Run every bucket a session sees once, so no client request pays for a first-shape compile."""
        started = time.perf_counter()
        sizes = sorted({min(size, self.run_limit) for size in self.buckets})
        for size in sizes:
            self.infer(np.zeros((size, *self.input_shape), np.float32))
        log.info("model %s: warmed batch sizes %s in %.2fs", self.name, sizes, time.perf_counter() - started)
