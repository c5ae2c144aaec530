"""Serving configuration: the one place that reads environment variables.

`graft serve` turns its flags into these variables, so the same settings work for `bentoml serve`,
a built Bento and a container (`docker run -e GRAFT_MAX_BATCH_SIZE=16 ...`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from graft.artifact.errors import GraftError
from graft.artifact.image import DEFAULT_MAX_PIXELS
from graft.artifact.postprocess import batch_buckets
from graft.artifact.runtime import DEFAULT_PROVIDERS, default_trt_cache_dir

ENV_PREFIX = "GRAFT_"
DEFAULT_MODELS = "tf_efficientnet_lite0"  # a BentoML model-store tag: `make serve`'s and `make bento`'s model


class ConfigError(GraftError, ValueError):
    """A configuration variable holds a value the service cannot use."""


def _env_int(name: str, default: int, *, minimum: int = 1) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"expected {ENV_PREFIX}{name} to be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"expected {ENV_PREFIX}{name} >= {minimum}, got {value}")
    return value


def _env_list(name: str, default: str) -> tuple[str, ...]:
    raw = os.environ.get(ENV_PREFIX + name) or default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _secret(name: str) -> str:
    """`GRAFT_<NAME>`, else the contents of the file `GRAFT_<NAME>_FILE` names (a mounted secret)."""
    value = os.environ.get(ENV_PREFIX + name, "")
    path = os.environ.get(ENV_PREFIX + name + "_FILE", "")
    if value and path:
        raise ConfigError(f"expected one of {ENV_PREFIX}{name} and {ENV_PREFIX}{name}_FILE, got both")
    if not path:
        return value
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"expected {ENV_PREFIX}{name}_FILE to name a readable file, got {path} ({error.strerror})") from None


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(ENV_PREFIX + name) or default
    if value not in choices:
        raise ConfigError(f"expected {ENV_PREFIX}{name} to be one of {', '.join(choices)}, got {value!r}")
    return value


def _built_models() -> str:
    """The models a Bento was built with (`bentoml build --arg models=...`), else the default.

    NOTE: Bento arguments travel inside the Bento and BentoML restores them wherever it loads one
    (`bentoml serve BENTO`, each worker, the container), so a Bento serves the model it was built
    with; an environment variable in the bentofile reaches only the generated Dockerfile.
    """
    import bentoml

    return str(getattr(bentoml.use_arguments(), "models", "") or DEFAULT_MODELS)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the services read from the environment (`GRAFT_<FIELD>` in upper case).

    Attributes:
        models: model references, comma-separated in `GRAFT_MODELS`: an artifact directory, a
            BentoML model tag, or `NAME=DIR_OR_TAG` to serve it under another name. Unset: the
            models a Bento was built with, else the default model's store tag.
        default_model: the model used when a request names none; empty means the first one.
        workers: server processes (BentoML `workers`); each has its own sessions and batchers.
        max_batch_size: largest batch graft's batcher runs on one session.
        max_queue: most images waiting in one model's batcher; more get 429 at once.
        max_latency_ms: each image's deadline from the request's arrival; an image that cannot be
            run in time is answered 503 instead of run (a request's `timeout_ms` may shorten it).
        max_images: most image parts accepted in one request.
        max_pixels: most pixels in one decoded image (decompression bombs).
        max_request_bytes: largest request body; larger ones get 413 before they are read.
        decode_threads: threads decoding and preprocessing images in each worker.
        intra_op_threads: ONNX Runtime intra-op threads per session; 0 means the cores divided
            among the workers.
        intra_op_spinning: let idle intra-op threads busy-wait (`GRAFT_INTRA_OP_SPINNING=1`); off by
            default because decoding runs on the same cores.
        providers: ONNX Runtime providers to try, in order; unavailable ones are skipped.
        trt_cache_dir: where TensorRT keeps built engines between restarts.
        max_concurrency: most requests in flight in one worker; more get 429 before their body
            is read.
        heads: extra heads, comma-separated `NAME=DIR` in `GRAFT_HEADS` (`graft serve --head`).
        heads_dir: where heads fitted through `POST /heads` are kept (and loaded from at start);
            empty: fitting through the API is off.
        max_heads: most heads served.
        max_fit_images: most images in one `POST /heads`.
        max_classes: most classes in one head.
        heads_poll_ms: how often each worker scans the heads directory for heads other workers or
            replicas fitted, replaced or deleted.
        admin_token: `GRAFT_ADMIN_TOKEN` (or the file `GRAFT_ADMIN_TOKEN_FILE` names), required by
            `POST`/`DELETE /heads`; empty: those answer 403.
        api_keys: `GRAFT_API_KEYS` (or the file `GRAFT_API_KEYS_FILE` names), separated by commas or
            lines; when set, inference and listing routes need one.
        log_format: `plain` lines or `json` objects, one per record, on the server's stderr.
        log_level: the `graft` loggers' level.
        access_log: BentoML's log line per request (`GRAFT_ACCESS_LOG=1`); off by default.
        tracing: OpenTelemetry spans for graft's routes (`GRAFT_TRACING=1`, with BentoML's tracing
            exporter configured); off by default.
        cache_mb: megabytes of each worker's exact-content cache of per-image results
            (`graft.service.cache`); 0, the default, turns it off.
    """

    models: tuple[str, ...] = field(default_factory=lambda: _env_list("MODELS", _built_models()))
    default_model: str = field(default_factory=lambda: os.environ.get(ENV_PREFIX + "DEFAULT_MODEL", ""))
    workers: int = field(default_factory=lambda: _env_int("WORKERS", 1))
    max_batch_size: int = field(default_factory=lambda: _env_int("MAX_BATCH_SIZE", 32))
    max_queue: int = field(default_factory=lambda: _env_int("MAX_QUEUE", 128))
    max_latency_ms: int = field(default_factory=lambda: _env_int("MAX_LATENCY_MS", 10_000))
    max_images: int = field(default_factory=lambda: _env_int("MAX_IMAGES", 32))
    max_pixels: int = field(default_factory=lambda: _env_int("MAX_PIXELS", DEFAULT_MAX_PIXELS))
    max_request_bytes: int = field(default_factory=lambda: _env_int("MAX_REQUEST_BYTES", 64 << 20))
    decode_threads: int = field(default_factory=lambda: _env_int("DECODE_THREADS", min(8, os.cpu_count() or 1)))
    intra_op_threads: int = field(default_factory=lambda: _env_int("INTRA_OP_THREADS", 0, minimum=0))
    intra_op_spinning: bool = field(default_factory=lambda: _env_int("INTRA_OP_SPINNING", 0, minimum=0) > 0)
    providers: tuple[str, ...] = field(default_factory=lambda: _env_list("PROVIDERS", ",".join(DEFAULT_PROVIDERS)))
    trt_cache_dir: Path = field(
        default_factory=lambda: Path(os.environ.get(ENV_PREFIX + "TRT_CACHE_DIR") or default_trt_cache_dir())
    )
    max_concurrency: int = field(default_factory=lambda: _env_int("MAX_CONCURRENCY", 64))
    heads: tuple[str, ...] = field(default_factory=lambda: _env_list("HEADS", ""))
    heads_dir: Path | None = field(
        default_factory=lambda: Path(os.environ[ENV_PREFIX + "HEADS_DIR"]) if os.environ.get(ENV_PREFIX + "HEADS_DIR") else None
    )
    max_heads: int = field(default_factory=lambda: _env_int("MAX_HEADS", 100))
    max_fit_images: int = field(default_factory=lambda: _env_int("MAX_FIT_IMAGES", 2000))
    max_classes: int = field(default_factory=lambda: _env_int("MAX_CLASSES", 1000))
    heads_poll_ms: int = field(default_factory=lambda: _env_int("HEADS_POLL_MS", 1000, minimum=50))
    admin_token: str = field(default_factory=lambda: _secret("ADMIN_TOKEN"), repr=False)
    api_keys: tuple[str, ...] = field(
        default_factory=lambda: tuple(key.strip() for key in _secret("API_KEYS").replace("\n", ",").split(",") if key.strip()),
        repr=False,
    )
    log_format: str = field(default_factory=lambda: _env_choice("LOG_FORMAT", "plain", ("plain", "json")))
    log_level: str = field(default_factory=lambda: _env_choice(
        "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")))
    access_log: bool = field(default_factory=lambda: _env_int("ACCESS_LOG", 0, minimum=0) > 0)
    tracing: bool = field(default_factory=lambda: _env_int("TRACING", 0, minimum=0) > 0)
    cache_mb: int = field(default_factory=lambda: _env_int("CACHE_MB", 0, minimum=0))

    def session_threads(self) -> int:
        """ONNX Runtime intra-op threads per session: as set, or the cores shared among workers."""
        return self.intra_op_threads or max(1, (os.cpu_count() or 1) // self.workers)

    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes sessions are padded to and warmed at: powers of two up to the maximum."""
        return batch_buckets(self.max_batch_size)
