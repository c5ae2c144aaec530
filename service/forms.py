"""Strict multipart forms: file parts named `images`, known option fields only, Starlette's limits.

Parsing is Starlette's (`Request.form` with its file and field limits); this module decides what a
valid request is and says what was expected when it is not. A text value where a file belongs is
refused, never fetched: the server downloads nothing a client names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from graft.service.errors import BadRequest

FORM = "a multipart/form-data body with file parts named 'images' (curl -F images=@photo.jpg)"
MAX_FIELD_BYTES = 64 << 10  # option values are short; anything longer is a mistake


def positive_int(value: str) -> int:
    """A form value as a positive integer (`3`, `+3`); anything else is refused."""
    text = value.strip().lstrip("+")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(text)


def boolean(value: str) -> bool:
    """A form value as a boolean: true or false (any case), exactly what the docs promise."""
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"expected true or false, got {value!r}")


def text(value: str) -> str:
    return value.strip()


def choice(*values: str) -> Callable[[str], str]:
    """A parser for a form value that must be one of `values` (any case)."""
    def parse(value: str) -> str:
        chosen = value.strip().lower()
        if chosen not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {value!r}")
        return chosen

    return parse


@dataclass(frozen=True)
class Field:
    """One option field: how to parse it, its default, and what `/docs` says about it."""

    parse: Callable[[str], Any]
    default: Any
    description: str
    repeated: bool = False  # a list, one value per part (e.g. one label per image)


@dataclass(frozen=True)
class Form:
    images: list[bytes]
    options: dict[str, Any]  # every field: as sent, or its default
    sent: frozenset[str] = frozenset()  # the fields the client sent


async def read_form(
    request: Request, fields: dict[str, Field], *, max_images: int, files: str = "images", min_images: int = 1,
) -> Form:
    """Parse `request` as a multipart form: file parts named `files`, then `fields` (all optional).

    Raises:
        BadRequest: not a multipart form, too many parts, a text value where a file belongs, a
            file where a value belongs, an unknown or repeated field, or a value that does not parse.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest(expected=FORM, got=f"Content-Type {content_type or 'none'!r}")
    try:
        form = await request.form(max_files=max_images, max_fields=len(fields) + max_images + 8,
                                  max_part_size=MAX_FIELD_BYTES)
    except HTTPException as error:  # Starlette's limits and malformed bodies
        if str(error.detail).startswith("Too many files"):  # Starlette stops counting at the limit
            raise BadRequest(expected=f"at most {max_images} images per request", got=f"more than {max_images}") from None
        raise BadRequest(expected=f"{FORM}, at most {max_images} images", got=error.detail) from None
    try:
        images: list[bytes] = []
        options: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == files:
                if not isinstance(value, UploadFile):
                    shown = "an empty value" if not value else f"the text {value[:80]!r}"
                    raise BadRequest(
                        expected=f"file parts in field {files!r} (curl -F {files}=@photo.jpg; "
                                 "the server does not fetch URLs)",
                        got=shown,
                    )
                images.append(await value.read())
                continue
            field = fields.get(key)
            if field is None:
                raise BadRequest(expected=f"form fields {sorted([files, *fields])}", got=f"a field named {key!r}")
            if isinstance(value, UploadFile):
                raise BadRequest(expected=f"a text value in field {key!r}", got=f"a file ({value.filename!r})")
            try:
                parsed = field.parse(value)
            except ValueError as error:
                raise BadRequest(f"{key}: {error}", expected=f"{key} as {field.description}", got=repr(value)) from None
            if field.repeated:
                options.setdefault(key, []).append(parsed)
            elif key in options:
                raise BadRequest(expected=f"one value for {key!r}", got="several")
            else:
                options[key] = parsed
    finally:
        await form.close()
    if len(images) < min_images:
        raise BadRequest(expected=FORM, got="no file parts named 'images'")
    sent = frozenset(options)
    for key, field in fields.items():
        options.setdefault(key, [] if field.repeated else field.default)
    return Form(images, options, sent)
