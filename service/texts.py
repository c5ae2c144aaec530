"""Text requests: `/embed` and `/classify` take `{"texts": [...], ...options}` as JSON for text models.

The body is validated by pydantic models that forbid unknown fields; every mistake is a 400 saying
what was expected. Images go to image models as multipart forms; each route refuses the other kind.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.requests import Request

from graft.service.errors import BadRequest
from graft.service.forms import FORM

TEXTS_BODY = 'a JSON body {"texts": ["...", ...]} (Content-Type: application/json)'


def is_json(request: Request) -> bool:
    """Whether the client sent JSON (a text request) rather than a form (images)."""
    return request.headers.get("content-type", "").lower().startswith("application/json")


class TextsRequest(BaseModel):
    """What every text request carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    texts: Annotated[list[StrictStr], Field(min_length=1)]
    model: StrictStr = ""
    timeout_ms: Annotated[int, Field(ge=1, strict=True)] | None = None
    truncate: StrictBool = True
    """Texts over the model's token limit keep their first tokens (the answer lists them); false: 400."""


class EmbedTexts(TextsRequest):
    normalize: StrictBool = True
    encoding: Literal["json", "base64", "binary", "npy"] = "json"
    dtype: Literal["float32", "float16"] = "float32"


class ClassifyTexts(TextsRequest):
    top_k: Annotated[int, Field(ge=1, strict=True)] | None = None


class FitTexts(BaseModel):
    """`POST /heads` with labelled texts: a head on a text model's embedding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    texts: Annotated[list[StrictStr], Field(min_length=1)]
    labels: Annotated[list[StrictStr], Field(min_length=1)]
    backbone: StrictStr = ""
    overwrite: StrictBool = False
    truncate: StrictBool = True


Body = TypeVar("Body", bound=BaseModel)


async def read_texts(request: Request, kind: type[Body]) -> Body:
    """Parse the JSON body as `kind`; a 400 naming the first problem otherwise (non-UTF-8 bytes included)."""
    try:
        return kind.model_validate_json(await request.body())
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(map(str, problem["loc"])) or "body"
        fields = ", ".join(kind.model_fields)
        raise BadRequest(expected=f"{TEXTS_BODY} with fields among {fields} for a text model, or {FORM} for an "
                         "image model", got=f"{where}: {problem['msg']}") from None
