"""Settings read from `GRAFT_*` environment variables (pydantic-settings), refused in one line.

`RuntimeSettings` holds how an artifact runs on ONNX Runtime, which the service
(`graft.service.config.ServeConfig` extends it) and batch jobs (`graft.batch.job.JobConfig` takes
its defaults from it) share, so `GRAFT_PROVIDERS` or `GRAFT_TRT_CACHE_DIR` mean one thing everywhere.

NOTE: `graft`'s parser builds `graft serve`'s flags from these fields, so this module imports only
pydantic at load; ONNX Runtime's defaults are read when settings are (ONNX Runtime is an extra).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge
from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from graft.artifact.errors import GraftError

ENV_PREFIX = "GRAFT_"


class ConfigError(GraftError, ValueError):
    """A configuration variable holds a value graft cannot use."""


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return ENV_PREFIX + field.upper()


def split_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` (or one per line) -> ("a", "b", "c")."""
    return tuple(item.strip() for item in re.split(r"[,\n]", text) if item.strip())


def _split(value: Any) -> Any:
    """A string split as `split_list`; anything else is left to the field's type."""
    return split_list(value) if isinstance(value, str) else value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split)]
"""A list written as comma-separated text in its variable (not JSON, pydantic-settings' default)."""


def expected(field: FieldInfo) -> str:
    """What a field accepts, in words: "an integer >= 1", "one of plain, json", "0 or 1"."""
    kind = field.annotation
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(kind))
    if kind is bool:
        return "0 or 1"
    if kind is int:
        return "an integer" + "".join(f" >= {m.ge}" for m in field.metadata if isinstance(m, Ge))
    return f"a {getattr(kind, '__name__', kind)}"


def _default_providers() -> tuple[str, ...]:
    from graft.artifact.runtime import DEFAULT_PROVIDERS

    return DEFAULT_PROVIDERS


def _default_trt_cache_dir() -> Path:
    from graft.artifact.runtime import default_trt_cache_dir

    return default_trt_cache_dir()


class RuntimeSettings(BaseSettings):
    """How artifacts run on ONNX Runtime (`GRAFT_<FIELD>`); the constructor raises `ConfigError`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True)

    max_batch_size: int = Field(
        32, ge=1, description="largest batch run on one ONNX Runtime session (the service's batcher, a batch "
        "job's --batch-size); batch sizes up to it are warmed in powers of two")
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per session; 0: the service divides the cores among "
        "its workers, a batch job lets ONNX Runtime use one per physical core")
    providers: CommaList = Field(
        default_factory=_default_providers,
        description="ONNX Runtime providers to try, in order; those this ONNX Runtime lacks are skipped")
    trt_cache_dir: Path = Field(
        default_factory=_default_trt_cache_dir, description="where TensorRT keeps built engines between runs")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError("; ".join(self._explain(e) for e in error.errors())) from None

    @classmethod
    def _explain(cls, error: ErrorDetails) -> str:
        """One pydantic error as "expected GRAFT_X to be ..., got ..."."""
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):  # raised by a validator, already worded
            return str(cause)
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in cls.model_fields:
            return error["msg"]
        return f"expected {env_name(name)} to be {expected(cls.model_fields[name])}, got {error['input']!r}"
