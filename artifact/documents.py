"""The artifact contract's JSON documents (`manifest.json`, `head.json`): one way to validate,
read and write a frozen pydantic dataclass, with errors of the document's own type."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from graft.artifact.errors import GraftError

_ADAPTERS: dict[type, TypeAdapter] = {}


def _adapter(cls: type) -> TypeAdapter:
    """One TypeAdapter per document class (building one compiles its schema)."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


class JsonDocument:
    """Mixin for a frozen pydantic dataclass. Subclasses set `invalid` (the error raised for a bad
    document) and `document` (what messages call it)."""

    invalid: type[GraftError] = GraftError
    document = "document"

    def to_dict(self) -> dict[str, Any]:
        return _adapter(type(self)).dump_python(self, mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: object = None):
        """Parse and validate; raise `invalid` naming every problem (and `source`, e.g. the file)."""
        try:
            return _adapter(cls).validate_json(text)
        except ValidationError as error:
            raise cls._invalid(error, source) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        try:
            return _adapter(cls).validate_python(data)
        except ValidationError as error:
            raise cls._invalid(error, None) from None

    @classmethod
    def _invalid(cls, error: ValidationError, source: object) -> GraftError:
        # One line, so `graft serve` can refuse to start with one line saying why.
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc']))}: {_message(problem)}" if problem["loc"] else _message(problem)
            for problem in error.errors(include_url=False)
        )
        where = f" {source}" if source is not None else ""
        return cls.invalid(f"invalid {cls.document}{where}: {problems}")


def _message(problem: ErrorDetails) -> str:
    """pydantic's message, without the "Value error, " it puts before a validator's own words."""
    cause = problem.get("ctx", {}).get("error")
    return str(cause) if problem["type"] == "value_error" and cause is not None else problem["msg"]
