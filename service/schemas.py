"""Response bodies, as pydantic models: what `/docs` and `/openapi.json` describe.

Handlers build plain dicts of these shapes (validating every response would cost time on the hot
path); `tests/unit/service` validates real responses against these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    index: int = Field(description="the label's position in the model's output")
    score: float = Field(description="softmax probability")


class ClassifyResponse(BaseModel):
    model: str
    top_k: int = Field(description="labels returned per image (the request's top_k, capped at the label count)")
    top_k_capped: bool = Field(description="true when the top_k the request sent exceeded the model's label count")
    predictions: list[list[Prediction]] = Field(description="one list per image, in the order sent, best first")
    truncated: list[int] | None = Field(None, description="texts only: the indices of texts cut to the model's "
                                        "token limit")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    normalized: bool
    encoding: Literal["base64"] | None = Field(None, description="present with encoding=base64 only")
    dtype: Literal["float32", "float16"] | None = Field(None, description="present with encoding=base64 only")
    truncated: list[int] | None = Field(None, description="texts only: the indices of texts cut to the model's "
                                        "token limit")
    embeddings: list[list[float]] | list[str] = Field(
        description="one vector per image, in the order sent; with encoding=base64, a base64 string of its "
                    "little-endian dtype bytes")


class ModelSummary(BaseModel):
    name: str
    task: str = Field(description="classifier or embedder")
    backbone: str
    version: str
    num_labels: int
    embedding_dim: int
    modality: str = Field(description="image or text: what /embed and /classify take for it")
    input_size: list[int] | None = Field(description="image models: [height, width] of the model's input")
    max_tokens: int | None = Field(description="text models: most tokens per text; longer ones are truncated")
    precision: str
    provider: str = Field(description="the ONNX Runtime execution provider the session runs on")
    heads: list[HeadSummary] = Field(description="heads served on this model's embedding")


class HeadSummary(BaseModel):
    name: str
    backbone: str = Field(description="the served model whose embedding the head reads")
    backbone_version: str = Field(description="the version of that model the head was fitted on")
    num_labels: int
    labels: list[str]
    source: str = Field(description="api (fitted through POST /heads) or run (exported from a training run)")
    run: str | None = Field(description="the training run's name (source run)")
    num_images: int
    images_per_class: dict[str, int]
    accuracy_estimate: float | None
    accuracy_method: str
    version: str
    created_at: str


class HeadFitResponse(BaseModel):
    name: str
    backbone: str
    labels: list[str]
    num_images: int
    images_per_class: dict[str, int]
    accuracy_estimate: float = Field(description="cross-validated accuracy of the fit, 0..1")
    accuracy_method: str
    fit_seconds: float
    version: str


class HeadsResponse(BaseModel):
    heads: list[HeadSummary]


class DeletedResponse(BaseModel):
    deleted: str = Field(description="the head's name")


class InferInput(BaseModel):
    name: str = Field(description="images (BYTES: encoded image files) or input (FP32 [N, 3, H, W] preprocessed)")
    shape: list[int]
    datatype: str
    parameters: dict = Field(default_factory=dict, description="binary_data_size with the binary extension")
    data: list | None = Field(default=None, description="row-major values; absent when sent as binary")


class InferOutputRequest(BaseModel):
    name: str = Field(description="logits, probabilities or embedding")
    parameters: dict = Field(default_factory=dict, description="binary_data, classification (top-k as text)")


class InferRequestBody(BaseModel):
    """The Open Inference Protocol's JSON body; with the binary extension the tensors follow it
    (`Inference-Header-Content-Length` says where the JSON ends)."""

    id: str | None = None
    parameters: dict = Field(default_factory=dict)
    inputs: list[InferInput] = Field(description="exactly one of images and input")
    outputs: list[InferOutputRequest] = Field(default_factory=list, description="empty: every output")


class ModelsResponse(BaseModel):
    default: str = Field(description="the model used when a request names none")
    models: list[ModelSummary]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one line")
    expected: str | None = Field(description="what the server expected")
    got: str | None = Field(description="what it got instead")
