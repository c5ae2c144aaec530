"""Serving configuration: the one place the service reads environment variables (`GRAFT_<FIELD>`).

`graft serve` turns its flags into these variables (its tuning flags are built from these fields),
so the same settings work for `bentoml serve`, a built Bento and a container
(`docker run -e GRAFT_MAX_BATCH_SIZE=16 ...`). A bad value stops the server with one line:
"expected GRAFT_X to be ..., got ...".

NOTE: `graft`'s parser imports this module, so it imports only pydantic at load; defaults that live
beside Pillow or BentoML are read when the settings are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BeforeValidator, Field, model_validator

from graft.artifact.settings import CommaList, ConfigError, RuntimeSettings, env_name, split_list

__all__ = ["ConfigError", "ServeConfig"]

DEFAULT_MODELS = "tf_efficientnet_lite0"  # a BentoML model-store tag: `make serve`'s and `make bento`'s model
SECRETS = ("admin_token", "api_keys")
"""Settings that may also come from the file `GRAFT_<NAME>_FILE` names (a mounted secret)."""


def _built_models() -> tuple[str, ...]:
    """The models a Bento was built with (`bentoml build --arg models=...`), else the default.

    NOTE: Bento arguments travel inside the Bento and BentoML restores them wherever it loads one
    (`bentoml serve BENTO`, each worker, the container), so a Bento serves the model it was built
    with; an environment variable in the bentofile reaches only the generated Dockerfile.
    """
    import bentoml

    return split_list(str(getattr(bentoml.use_arguments(), "models", "") or DEFAULT_MODELS))


def _default_max_pixels() -> int:
    from graft.artifact.image import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


def _spinning(value: Any) -> Any:
    """The switch GRAFT_INTRA_OP_SPINNING was (0 or 1) read as the setting it is now (off or on)."""
    return {"0": "off", "1": "on", False: "off", True: "on"}.get(value, value) if isinstance(value, (str, bool)) else value


def _read_secret(name: str, path: Any) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"expected {env_name(name)} to name a readable file, got {path} ({error.strerror})") from None


class Spinning(TypedDict):
    """The spinning arguments `graft.artifact.runtime.Runner` and `TextRunner` take."""

    intra_op_spinning: bool | None  # None: measured at start
    spin_between_runs: bool


class ServeConfig(RuntimeSettings):
    """Everything the services read from the environment; `ServeConfig()` reads it (raises `ConfigError`)."""

    models: CommaList = Field(
        default_factory=_built_models,
        description="model references, comma-separated: an artifact directory, a BentoML model tag, or "
        "NAME=DIR_OR_TAG to serve it under another name; unset: the models a Bento was built with, else "
        f"the {DEFAULT_MODELS} model in the BentoML store")
    default_model: str = Field("", description="the model used when a request names none; empty: the first one")
    workers: int = Field(1, ge=1, description="server processes (BentoML workers), each with its own sessions "
                         "and batchers")
    max_queue: int = Field(128, ge=1, description="most images waiting in one model's batcher; more get 429 at once")
    max_latency_ms: int = Field(
        10_000, ge=1, description="each image's deadline from its request's arrival; an image that cannot make "
        "it is answered 503 without running (a request's timeout_ms may shorten it)")
    max_images: int = Field(32, ge=1, description="most image parts accepted in one request (text models: most texts)")
    max_text_chars: int = Field(20_000, ge=1, description="most characters in one text sent to a text model; "
                                "longer texts get 400 (texts over the model's token limit are truncated, and "
                                "the answer says which)")
    max_pixels: int = Field(default_factory=_default_max_pixels, ge=1,
                            description="most pixels in one decoded image (decompression bombs)")
    max_request_bytes: int = Field(64 << 20, ge=1,
                                   description="largest request body; larger ones get 413 before they are read")
    decode_threads: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=1,
                                description="threads decoding and preprocessing images in each worker "
                                "(default: the cores, at most 8)")
    intra_op_spinning: Annotated[Literal["auto", "off", "run", "on"], BeforeValidator(_spinning)] = Field(
        "auto", description="idle ONNX Runtime intra-op threads busy-wait: off never; run between the operators "
        "of a batch, asleep between batches; on between batches too (taking cycles from decoding on the same "
        "cores); auto: run if that makes a batch-1 run 1.5x faster when measured at start, else off")
    concurrent_batches: int = Field(
        1, ge=1, description="batches one model runs at once in each worker; 2 on the CPU fills the cores one batch "
        "leaves idle (1.03-1.09x the images/s at 16 clients) for the memory of a second batch's activations")
    max_concurrency: int = Field(64, ge=1, description="most requests in flight in one worker; more get 429 "
                                 "before their body is read")
    heads: CommaList = Field((), description="extra heads, comma-separated NAME=DIR (graft serve --head)")
    heads_dir: Path | None = Field(
        None, description="where heads fitted through POST /heads are kept (and loaded from at start); "
        "unset: fitting through the API is off")
    max_heads: int = Field(100, ge=1, description="most heads served")
    max_fit_images: int = Field(2000, ge=1, description="most images in one POST /heads")
    max_classes: int = Field(1000, ge=1, description="most classes in one head")
    heads_poll_ms: int = Field(
        1000, ge=50, description="how often each worker scans the heads directory for heads other workers or "
        "replicas fitted, replaced or deleted")
    admin_token: str = Field("", repr=False, description="bearer token POST and DELETE /heads require; "
                             "empty: those answer 403")
    admin_token_file: Path | None = Field(None, description="a file holding the admin token (a mounted secret)")
    api_keys: CommaList = Field((), repr=False, description="keys, separated by commas or lines; when set, "
                                "inference and listing routes need one")
    api_keys_file: Path | None = Field(None, description="a file holding the API keys (a mounted secret)")
    log_format: Literal["plain", "json"] = Field(
        "plain", description="plain lines or json objects, one per record, on the server's stderr")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="the graft loggers' level")
    access_log: bool = Field(False, description="BentoML's log line per request (it costs the event loop more "
                             "than a 429 does)")
    tracing: bool = Field(False, description="OpenTelemetry spans for graft's routes (with BentoML's tracing "
                          "exporter configured)")
    cache_mb: int = Field(0, ge=0, description="megabytes of each worker's exact-content cache of per-image "
                          "results; 0 turns it off")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, values: Any) -> Any:
        """`admin_token` / `api_keys` from the file `GRAFT_<NAME>_FILE` names; both set is an error."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for name in SECRETS:
            path = values.get(name + "_file")
            if path and values.get(name):
                raise ConfigError(f"expected one of {env_name(name)} and {env_name(name + '_file')}, got both")
            if path:
                values[name] = _read_secret(name + "_file", path)
        return values

    def session_spinning(self) -> Spinning:
        """`intra_op_spinning` as `graft.artifact.runtime.Runner` takes it (None: measured at start)."""
        return {"intra_op_spinning": None if self.intra_op_spinning == "auto" else self.intra_op_spinning != "off",
                "spin_between_runs": self.intra_op_spinning == "on"}

    def session_threads(self) -> int:
        """ONNX Runtime intra-op threads per session: as set, or the cores shared among workers."""
        return self.intra_op_threads or max(1, (os.cpu_count() or 1) // self.workers)

    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes sessions are padded to and warmed at: powers of two up to the maximum."""
        from graft.artifact.postprocess import batch_buckets

        return batch_buckets(self.max_batch_size)
