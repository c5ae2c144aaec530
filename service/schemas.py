"""Request and response bodies, and the items passed from the API service to the inference service."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from bentoml.validators import TensorSchema
from pydantic import BaseModel, BeforeValidator, Field


def _positive_int(value: Any) -> Any:
    # NOTE: multipart form values arrive JSON-decoded ("3" -> 3, "true" -> True, "2.5" -> 2.5).
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("+").isdigit() or int(value) < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(value)


TopK = Annotated[int, BeforeValidator(_positive_int), Field(description="labels per image, best first")]
Tensor = Annotated[np.ndarray, TensorSchema("numpy-array", "float32")]
Pixels = Annotated[np.ndarray, TensorSchema("numpy-array", "uint8")]
ModelName = Annotated[str, BeforeValidator(str), Field(description="model to use; empty for the default")]


class Item(BaseModel):
    """One resized and cropped image on its way to the batched inference API, tagged with its model."""

    model: str
    pixels: Pixels  # uint8 RGB [H, W, 3] of the model's input size; normalised batch-wise there


class ItemResult(BaseModel):
    """The runner's result for one image: softmax probabilities (classifiers) and raw embedding."""

    embedding: Tensor
    probabilities: Tensor | None = None


class Prediction(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class ClassifyResponse(BaseModel):
    model: str
    top_k: int = Field(description="labels returned per image (the request's top_k, capped at the label count)")
    top_k_capped: bool = Field(description="true when the requested top_k exceeded the model's label count")
    predictions: list[list[Prediction]] = Field(description="one list per image, in the order sent, best first")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    normalized: bool
    embeddings: list[list[float]] = Field(description="one vector per image, in the order sent")
