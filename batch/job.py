"""A batch job on Ray Data: read -> decode/preprocess (CPU tasks) -> ONNX Runtime (actor pool) -> Parquet.

Ray Data does the distribution: blocks of rows, task and actor scheduling, backpressure, retries.
graft supplies only the per-batch functions (`graft.batch.stages`) and the job's edges: checking the
arguments, starting or joining Ray, writing the output atomically and summarising.

Output: a directory of Parquet files with one row per input image: `path`, `model`, `version`,
`error` (null when the image was fine) and either `embedding` (float32 fixed-size list) or top-k
`labels`/`indices`/`scores` (best first), plus `_graft.json` with the job's summary. It is written to
`OUT.tmp-<uuid>` beside OUT and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from graft.artifact.errors import GraftError
from graft.artifact.image import DEFAULT_MAX_PIXELS
from graft.artifact.manifest import Manifest, read_manifest
from graft.artifact.outputs import atomic_directory, check_output_dir
from graft.artifact.postprocess import served_identity
from graft.artifact.settings import RuntimeSettings
from graft.batch.sources import (
    BatchInputError,
    FileSource,
    ParquetSource,
    resolve_model,
    resolve_source,
    text_source,
)
from graft.batch.stages import CLASSIFY, EMBED, PATH, Infer, artifact_files, decode

log = logging.getLogger(__name__)

SUMMARY_FILE = "_graft.json"
"""Job summary inside OUT; the leading underscore makes Parquet readers skip it, and it marks OUT as
graft's own output (what `--overwrite` may replace)."""
PATHS_PER_BLOCK = 128


def _runtime(name: str):
    """A field defaulting to the shared runtime setting `name`: `GRAFT_<NAME>`, else its default."""
    return field(default_factory=lambda: getattr(RuntimeSettings(), name))


@dataclass(frozen=True)
class JobConfig:
    """One `graft batch` run.

    Attributes:
        task: "embed" or "classify".
        model: artifact directory or BentoML model tag.
        input: image folder, glob, or Parquet dataset (see `graft.batch.sources`).
        output: the Parquet directory to create.
        head: a head artifact directory applied to the embedding (classify only).
        column: the Parquet image-bytes or path column (auto-detected when None).
        top_k: predictions per image (classify).
        normalize: L2-normalise embeddings (embed).
        batch_size: images per ONNX Runtime call (default: GRAFT_MAX_BATCH_SIZE, else 32).
        decode_batch_size: images per decode task call.
        actors: inference actors (one session each); None: one per GPU, or 1 without GPUs.
        decode_tasks: most decode tasks at once; None lets Ray Data decide from free CPUs.
        intra_op_threads: ORT intra-op threads per actor; 0: one per physical core (default:
            GRAFT_INTRA_OP_THREADS, else 0).
        actor_cpus: CPUs Ray reserves per inference actor.
        actor_memory: bytes of memory Ray reserves per inference actor (session and batch buffers).
        ray_address: Ray cluster to join; None: `RAY_ADDRESS`, else a local Ray for this job.
        max_pixels: images with more pixels are error rows (decompression bombs).
        overwrite: replace an existing output directory written by graft batch.
        progress: show Ray Data's progress bars.
        providers: ONNX Runtime providers to try, in order (default: GRAFT_PROVIDERS, else the service's).
        trt_cache_dir: TensorRT engine cache on each node (default: GRAFT_TRT_CACHE_DIR, else the service's).

    The runtime defaults are the service's (`graft.artifact.settings.RuntimeSettings`), so one
    variable tunes both; a bad value raises `ConfigError`.
    """

    task: str
    model: str
    input: str
    output: Path
    head: Path | None = None
    column: str | None = None
    top_k: int = 5
    normalize: bool = True
    batch_size: int = _runtime("max_batch_size")
    decode_batch_size: int = 16
    actors: int | None = None
    decode_tasks: int | None = None
    intra_op_threads: int = _runtime("intra_op_threads")
    actor_cpus: float = 1.0
    actor_memory: int = 1 << 30
    ray_address: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True
    providers: tuple[str, ...] = _runtime("providers")
    trt_cache_dir: Path = _runtime("trt_cache_dir")


@dataclass(frozen=True)
class JobSummary:
    """What a finished job did; also written to OUT/_graft.json."""

    task: str
    model: str
    version: str
    precision: str
    output: str
    images: int
    errors: int
    seconds: float
    """Wall time of the pipeline (reading to the last Parquet file), without starting Ray."""
    images_per_second: float
    ray_start_seconds: float
    actors: int
    gpus_per_actor: int
    batch_size: int

    def line(self) -> str:
        return (
            f"{self.images} images, {self.errors} errors, {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s ({self.actors} actor(s), model {self.model} {self.version} {self.precision}) "
            f"-> {self.output}"
        )


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[float]:
    """Join the Ray at `address` (or `RAY_ADDRESS`), or start a local one for this job; yields the start-up seconds.

    `address` is anything `ray.init` takes: `auto` (the cluster this machine belongs to), `host:port`,
    `ray://host:10001` (Ray Client).

    A Ray already initialised in this process (a notebook, a test session) is used as it is and left
    running; one started here is shut down on the way out, whatever happens.
    """
    import ray

    if ray.is_initialized():
        yield 0.0
        return
    started = time.perf_counter()
    # NOTE: "local", not None: with None Ray would also join whatever `ray start` last left on this
    # machine (/tmp/ray/ray_current_cluster); joining a cluster is asked for explicitly (auto, host:port).
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    verbose = log.isEnabledFor(logging.DEBUG)
    ray.init(
        address=address,
        include_dashboard=False,
        # Ray's own notices (the local cluster's token authentication, Ray Data's execution plan and
        # its end-of-job resource warnings) drown graft's one summary line; `graft -v` shows them.
        logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=verbose,
    )
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


def _check(config: JobConfig) -> tuple[Path, Manifest, FileSource | ParquetSource, tuple[str, str]]:
    """Everything checked before Ray starts; returns the artifact, its source rows and (model, version) names."""
    if config.task not in (EMBED, CLASSIFY):
        raise BatchInputError(f"expected task embed or classify, got {config.task!r}")
    directory = resolve_model(config.model)
    manifest = read_manifest(directory)
    names = served_identity(manifest)
    if manifest.modality == "text" and config.task != EMBED:
        raise BatchInputError(f"expected `graft batch embed` for the text model {manifest.name}, got {config.task}")
    if config.head is not None:
        if config.task != CLASSIFY:
            raise BatchInputError("expected --head with `graft batch classify`, got it with embed")
        from graft.artifact.heads import read_head

        head = read_head(config.head)
        head.check_backbone(manifest)
        names = served_identity(manifest, head)
    elif config.task == CLASSIFY and manifest.task != "classifier":
        raise BatchInputError(
            f"expected a classifier artifact (or --head) for classify, got {manifest.task} {manifest.name}"
        )
    source: FileSource | ParquetSource
    if manifest.modality == "text":
        source = text_source(config.input, config.column)
    else:
        source = resolve_source(config.input, column=config.column)
    check_output_dir(config.output, config.overwrite, marker=SUMMARY_FILE, what="batch output directory",
                     error=BatchInputError)
    return directory, manifest, source, names


def _dataset(source: FileSource | ParquetSource):
    """The job's rows: a `path` column (image files) or the Parquet dataset's own columns."""
    import pyarrow as pa
    import ray.data

    if isinstance(source, ParquetSource):
        return ray.data.read_parquet(source.location)
    paths = source.paths
    # Listed on the driver and read by the decode tasks: an unreadable file becomes an error row
    # (ray.data.read_binary_files would fail the whole job on it), and the row count is known.
    blocks = [pa.table({PATH: pa.array(paths[i:i + PATHS_PER_BLOCK], pa.string())})
              for i in range(0, len(paths), PATHS_PER_BLOCK)]
    return ray.data.from_arrow(blocks)


def _head_files(head: Path | None) -> dict[str, bytes] | None:
    if head is None:
        return None
    return {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()}


def build_pipeline(config: JobConfig, directory: Path, manifest: Manifest, source: FileSource | ParquetSource):
    """The job's Ray Data pipeline (lazy: nothing runs until it is written); needs a connected Ray.

    Returns:
        (dataset, actors, GPUs per actor).
    """
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_actor = 1 if gpus >= 1 else 0
    actors = config.actors or max(1, int(gpus))
    text_column = source.text_column if isinstance(source, ParquetSource) else None
    if text_column is not None:  # texts are tokenised in the actor: microseconds beside the model
        dataset = _dataset(source)
    else:
        bytes_column = source.bytes_column if isinstance(source, ParquetSource) else None
        path_column = source.path_column if isinstance(source, ParquetSource) else PATH
        dataset = _dataset(source).map_batches(
            decode,
            batch_size=config.decode_batch_size,
            fn_kwargs={"spec": manifest.image_spec, "max_pixels": config.max_pixels, "bytes_column": bytes_column,
                       "path_column": path_column},
            compute=TaskPoolStrategy(size=config.decode_tasks),
            num_cpus=1,
        )
    dataset = dataset.map_batches(
        Infer,
        batch_size=config.batch_size,
        batch_format="numpy",
        # Shipped through the object store (nested, so Ray hands the actor a reference rather than
        # pinning it as a restartable constructor argument): nodes need no shared artifact path.
        fn_constructor_args=([ray.put(artifact_files(directory))],),
        fn_constructor_kwargs={
            "task": config.task, "batch_size": config.batch_size, "providers": config.providers,
            "intra_op_threads": config.intra_op_threads, "trt_cache_dir": str(config.trt_cache_dir),
            "top_k": config.top_k, "normalize_embeddings": config.normalize,
            "head_files": None if config.head is None else [ray.put(_head_files(config.head))],
            "text_column": text_column,
        },
        compute=ActorPoolStrategy(size=actors),
        num_cpus=config.actor_cpus,
        num_gpus=gpus_per_actor,
        # NOTE: besides reserving what a session needs, a memory request makes the actor's remote
        # args differ from the decode tasks', so Ray Data does not fuse decoding into the actor:
        # fused, each actor would decode and infer in turn instead of overlapping the two.
        memory=config.actor_memory,
    )
    return dataset, actors, gpus_per_actor


def run_job(config: JobConfig) -> JobSummary:
    """Run one batch job end to end and return its summary.

    Raises:
        BatchInputError: bad model, input or output, found before Ray starts.
        GraftError: the pipeline failed (nothing is left at the output path).
    """
    directory, manifest, source, (model, version) = _check(config)
    out = config.output.resolve()

    def recheck() -> None:  # before the swap: another job may have finished there meanwhile
        check_output_dir(out, config.overwrite, marker=SUMMARY_FILE, what="batch output directory",
                         error=BatchInputError)

    # Not hidden: `OUT.tmp-<id>` is what users see of a job in progress.
    with atomic_directory(out, before_swap=recheck, hidden=False) as tmp:
        with ray_session(config.ray_address) as ray_start:
            from ray.data import DataContext

            # After the import: Ray Data sets up its loggers when first imported.
            logging.getLogger("ray.data").setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
            DataContext.get_current().enable_progress_bars = config.progress
            dataset, actors, gpus_per_actor = build_pipeline(config, directory, manifest, source)
            log.info("batch %s: %s on %d actor(s) (%d GPU each) -> %s", config.task, manifest.name, actors,
                     gpus_per_actor, out)
            started = time.perf_counter()
            dataset.write_parquet(str(tmp))
            seconds = time.perf_counter() - started
            images, errors = _count(tmp)
        summary = JobSummary(
            task=config.task, model=model, version=version, precision=manifest.precision, output=str(out), images=images, errors=errors,
            seconds=round(seconds, 3), images_per_second=round(images / seconds, 2) if seconds else 0.0,
            ray_start_seconds=round(ray_start, 3), actors=actors, gpus_per_actor=gpus_per_actor,
            batch_size=config.batch_size,
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _count(folder: Path) -> tuple[int, int]:
    """Rows and error rows in the written Parquet files (reads only the `error` column)."""
    import pyarrow.dataset as pads

    if not folder.is_dir():  # Ray writes no directory when there were no rows at all
        raise GraftError(f"expected the job to write Parquet files to {folder}, got none")
    table = pads.dataset(str(folder), format="parquet").to_table(columns=["error"])
    return table.num_rows, table.num_rows - table.column("error").null_count
