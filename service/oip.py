"""Open Inference Protocol (KServe v2, Triton's HTTP API) for graft's models: the protocol layer only.

Pure functions from request bytes to checked tensors and from model outputs to response bytes; no
HTTP framework, no batcher, no model. The routes (`/v2/...`) hand a body in and get a body and
headers out, so every protocol rule is tested here without a server.

What graft answers, per model (a classifier, an embedder, or a head on a backbone):
- Inputs, exactly one per request, told apart by datatype (any name is accepted):
  `images`: BYTES [N] (or [N, 1]) of encoded images (JPEG, PNG, WebP, ...), decoded and preprocessed
  as `/classify` does; raw bytes in the binary extension, base64 strings in JSON (JSON strings
  must be text, and encoded images are not);
  the graph's input name (`manifest.io.input.name`): FP32 [N, 3, H, W] already preprocessed.
  A text model takes `texts`: BYTES [N] of UTF-8 strings (raw bytes in the binary extension, JSON
  strings as they are); a text over the model's token limit is refused, since OIP responses have
  no field to say it was cut.
- Outputs: `logits`, `probabilities` (softmax) and `embedding` (raw, not normalised) for models
  with labels; `embedding` only for embedders. All FP32 [N, dim]. The classification extension
  turns any of them into BYTES [N, k] strings "score:index:label", formatted as Triton does.
- Extensions: binary tensor data, classification, model configuration (`GET .../config`),
  statistics (`GET /v2/models[/{model}]/stats`), and the model repository's index
  (`POST /v2/repository/index`; not its load and unload: graft's models are fixed at start, so the
  extension itself is not announced).
- Versions are the artifacts' content hashes, with no integer alias: a name serves one version at a
  time, so a request that names none gets it, and one that pins a version the server no longer
  serves gets a 404 naming the current one, rather than a different model behind the same "1".
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from graft.artifact.manifest import Manifest
from graft.artifact.postprocess import top_k
from graft.service.errors import BadRequest, NotFound
from graft.service.responses import dumps

IMAGES_INPUT = "images"
TEXTS_INPUT = "texts"
LABELLED_OUTPUTS = ("logits", "probabilities")
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX model run by ONNX Runtime

# Fixed-size datatypes the protocol defines, as little-endian numpy dtypes (the binary extension
# sends a tensor's raw row-major bytes, and every client we know of is little-endian).
NUMERIC_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}  # numpy kinds a JSON array may hold, by target kind
_LENGTH = struct.Struct("<I")  # BYTES elements in binary: a 4-byte little-endian length, then the bytes


@dataclass(frozen=True)
class InputTensor:
    """One input as sent. `data`: an array of `shape` for numeric datatypes; for BYTES, `list[bytes]`
    from the binary extension or `list[str]` from JSON, flattened in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes] | list[str]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; `class_count` > 0 asks for the classification extension."""

    name: str
    binary: bool = False
    class_count: int = 0


@dataclass(frozen=True)
class InferRequest:
    """A parsed, checked inference request. Empty `outputs` means every output, with defaults."""

    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        """`parameters.binary_data_output`: the binary default for outputs that do not say."""
        return bool(self.parameters.get("binary_data_output", False))


@dataclass(frozen=True)
class ModelSignature:
    """What the protocol needs to know about one served model.

    A head on a backbone is built from the backbone's signature with the head's own name, version
    and labels: `dataclasses.replace(ModelSignature.from_manifest(name, backbone), version=...,
    labels=head_labels)`.
    """

    name: str
    version: str
    input_name: str
    input_size: tuple[int, int] | None  # None: a text model, which takes strings
    embedding_dim: int
    labels: tuple[str, ...] = ()
    precision: str = "fp32"

    @classmethod
    def from_manifest(cls, name: str, manifest: Manifest) -> ModelSignature:
        return cls(
            name=name, version=manifest.version, input_name=manifest.io.input.name,
            input_size=manifest.preprocessing.input_size if manifest.preprocessing else None,
            embedding_dim=manifest.embedding_dim,
            labels=tuple(manifest.labels), precision=manifest.precision,
        )

    @property
    def outputs(self) -> dict[str, int]:
        """Output name -> size of its one non-batch axis, in the order responses list them."""
        if not self.labels:
            return {"embedding": self.embedding_dim}
        classes = len(self.labels)
        return {"logits": classes, "probabilities": classes, "embedding": self.embedding_dim}

    def check_version(self, version: str | None) -> None:
        """Raise `NotFound` unless `version` (from `/versions/{version}`) is absent or this one."""
        if version is not None and version != self.version:
            expected, got = f"version {self.version!r}", repr(version)
            raise NotFound(f"model {self.name!r}: expected {expected}, got {got}", expected=expected, got=got)


def server_metadata(version: str) -> dict[str, Any]:
    """`GET /v2`."""
    return {"name": "graft", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(model: ModelSignature) -> dict[str, Any]:
    """`GET /v2/models/{model}`: both accepted inputs, the outputs, and (in `parameters`, which the
    tensor metadata has no room for) that a request sends exactly one of the inputs."""
    inputs: list[dict[str, Any]] = [{"name": TEXTS_INPUT if model.input_size is None else IMAGES_INPUT,
                                     "datatype": "BYTES", "shape": [-1]}]
    if model.input_size is not None:
        inputs.append({"name": model.input_name, "datatype": "FP32", "shape": [-1, 3, *model.input_size]})
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [
            {"name": name, "datatype": "FP32", "shape": [-1, dim]} for name, dim in model.outputs.items()
        ],
        "parameters": {"inputs": _one_input(model), "precision": model.precision},
    }


def _one_input(model: ModelSignature) -> str:
    if model.input_size is None:
        return f"exactly one input: BYTES '{TEXTS_INPUT}' [N] of UTF-8 strings"
    height, width = model.input_size
    return (f"exactly one input: BYTES '{IMAGES_INPUT}' [N] of encoded images, or FP32 "
            f"'{model.input_name}' [N, 3, {height}, {width}] already preprocessed")


def model_config(model: ModelSignature, max_batch_size: int) -> dict[str, Any]:
    """`GET /v2/models/{model}/config`, in Triton's JSON form of its model configuration.

    `dims` exclude the batch axis, as Triton's do when `max_batch_size` > 0. Triton needs at least
    one dim, so a batch of encoded images is `dims [1]` reshaped to `[]`: clients built from the
    config send [N, 1], which `model_input` accepts beside [N]. Both inputs are `optional`, since a
    request sends one of them: a client that fills every required input would send both.
    """
    strings = {"name": TEXTS_INPUT if model.input_size is None else IMAGES_INPUT, "data_type": "TYPE_STRING",
               "format": "FORMAT_NONE", "dims": [1], "reshape": {"shape": []}, "optional": True}
    inputs: list[dict[str, Any]] = [strings]
    if model.input_size is not None:
        inputs.append({"name": model.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                       "dims": [3, *model.input_size], "optional": True})
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": inputs,
        "output": [
            {"name": name, "data_type": "TYPE_FP32", "dims": [dim]} for name, dim in model.outputs.items()
        ],
        "dynamic_batching": {},
    }


@dataclass(frozen=True)
class ModelStatistics:
    """One model's figures as graft's metrics keep them, per image (what its batcher schedules).

    Attributes:
        images: images run, in batches that succeeded.
        batches: batches run.
        refused: images refused without running (queue full, deadline, client gone).
        queued, queue_s: images that left the queue for a batch, and their summed wait.
        prepared, prepare_s: images decoded and preprocessed, and the time that took.
        batch_s: the batches' summed run time (the session, softmax and split).
    """

    images: int = 0
    batches: int = 0
    refused: int = 0
    queued: int = 0
    queue_s: float = 0.0
    prepared: int = 0
    prepare_s: float = 0.0
    batch_s: float = 0.0


def model_statistics(model: ModelSignature, stats: ModelStatistics) -> dict[str, Any]:
    """One model's entry in Triton's statistics extension (`GET /v2/models[/{model}]/stats`).

    Counts are images, as Triton's `inference_count` counts a batch of N as N. Two fields differ
    from Triton's per-request figures, since graft times stages, not requests: `compute_infer`
    counts executions (its mean is one batch's run time, as in Triton's `batch_stats`), and
    `success.ns` is the sum of the stages (queue, input, infer). `fail` counts refused images,
    untimed; `last_inference` is not tracked (0).
    """

    def duration(count: int, seconds: float) -> dict[str, int]:
        return {"count": count, "ns": round(seconds * 1e9)}

    return {
        "name": model.name,
        "version": model.version,
        "last_inference": 0,
        "inference_count": stats.images,
        "execution_count": stats.batches,
        "inference_stats": {
            "success": duration(stats.images, stats.queue_s + stats.prepare_s + stats.batch_s),
            "fail": duration(stats.refused, 0),
            "queue": duration(stats.queued, stats.queue_s),
            "compute_input": duration(stats.prepared, stats.prepare_s),
            "compute_infer": duration(stats.batches, stats.batch_s),
            "compute_output": duration(0, 0),  # inside compute_infer
            "cache_hit": duration(0, 0),
            "cache_miss": duration(0, 0),
        },
        "batch_stats": [],
    }


def index_ready_only(body: bytes) -> bool:
    """`POST /v2/repository/index`'s optional `{"ready": true|false}` (an empty body is allowed)."""
    if not body.strip():
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _refusal("the index request", "a JSON object", "invalid JSON") from None
    _expect(isinstance(document, dict), "the index request", "a JSON object", type(document).__name__)
    ready = document.get("ready", False)
    _expect(isinstance(ready, bool), "'ready'", "true or false", repr(ready))
    return ready


def repository_index(models: list[ModelSignature], state: str, reason: str = "") -> list[dict[str, str]]:
    """`POST /v2/repository/index`: every served model (and head) in the server's one `state`
    (`READY`, `LOADING` while warming up, `UNAVAILABLE` while shutting down)."""
    return [{"name": m.name, "version": m.version, "state": state, "reason": reason} for m in models]


def parse_infer_request(body: bytes, header_length: str | int | None = None) -> InferRequest:
    """Parse `POST .../infer`: a JSON request, then binary tensor data in input order.

    Args:
        body: the whole request body.
        header_length: the `Inference-Header-Content-Length` header (the JSON part's size in
            bytes), or None when the JSON is the whole body.

    Raises:
        BadRequest: anything malformed: JSON, header length, shapes, datatypes, element or byte
            counts that disagree, binary data missing, short or left over.
    """
    json_size = _header_length(header_length, len(body))
    try:
        document = json.loads(body[:json_size])
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise BadRequest(
            f"invalid JSON inference request: {error}", expected="a JSON object", got="invalid JSON"
        ) from None
    _expect(isinstance(document, dict), "the request", "a JSON object", type(document).__name__)
    request_id = document.get("id")
    _expect(request_id is None or isinstance(request_id, str), "'id'", "a string", repr(request_id))
    parameters = _parameters(document, "the request")
    binary_output = parameters.get("binary_data_output", False)
    _expect(isinstance(binary_output, bool), "'parameters.binary_data_output'", "true or false",
            repr(binary_output))

    specs = document.get("inputs")
    _expect(isinstance(specs, list) and bool(specs), "'inputs'", "a non-empty list", repr(specs)[:80])
    binary = memoryview(body)[json_size:]
    offset = 0
    inputs = []
    for spec in specs:
        tensor, offset = _input(spec, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise _refusal("binary data after the JSON header",
                       f"{offset} bytes (the inputs' binary_data_size)", f"{len(binary)} bytes")
    return InferRequest(
        id=request_id, inputs=tuple(inputs),
        outputs=_requested(document.get("outputs", []), binary_output), parameters=parameters,
    )


def model_input(
    request: InferRequest, model: ModelSignature,
) -> tuple[Literal["images"], list[bytes]] | tuple[Literal["tensor"], np.ndarray] | tuple[Literal["texts"], list[str]]:
    """The request's one input as graft runs it: encoded images, a preprocessed float32 batch, or
    (a text model) strings.

    Raises:
        BadRequest: not exactly one input, an empty batch, a datatype other than BYTES or FP32, a
            shape that is not [N] / [N, 1] (BYTES) or the model's [N, 3, H, W] (FP32), a JSON
            string that is not base64, a text that is not UTF-8, or a non-finite value in a
            preprocessed tensor.
    """
    accepted = _one_input(model)
    if len(request.inputs) != 1:
        raise BadRequest(expected=accepted, got=f"{len(request.inputs)} inputs "
                         f"{[tensor.name for tensor in request.inputs]}")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    item = "text" if model.input_size is None else "image"
    if tensor.datatype == "BYTES":
        _expect(len(shape) == 1 or shape[1:] == [1], f"input '{tensor.name}'", "shape [N] or [N, 1]",
                str(shape))
        _expect(shape[0] > 0, f"input '{tensor.name}'", f"at least one {item}", "none")
        if model.input_size is None:
            return "texts", [_text(element, tensor.name, i) for i, element in enumerate(tensor.data)]
        return "images", [_image_bytes(element, tensor.name, i) for i, element in enumerate(tensor.data)]
    if tensor.datatype == "FP32" and model.input_size is not None:
        height, width = model.input_size
        _expect(len(shape) == 4 and shape[1:] == [3, height, width], f"input '{tensor.name}'",
                f"shape [N, 3, {height}, {width}]", str(shape))
        _expect(shape[0] > 0, f"input '{tensor.name}'", "at least one image", "none")
        # NaN or infinity would come back as non-JSON numbers; no preprocessed image holds them.
        _expect(bool(np.isfinite(tensor.data).all()), f"input '{tensor.name}'", "finite values",
                "NaN or infinity")
        return "tensor", np.ascontiguousarray(tensor.data, dtype=np.float32)
    raise BadRequest(expected=accepted, got=f"input '{tensor.name}' of datatype {tensor.datatype}")


def requested_outputs(request: InferRequest, model: ModelSignature) -> list[RequestedOutput]:
    """The outputs to send: those asked for, or all of the model's with the request's binary default.

    Check this before running the model, so a mistyped name costs no inference.

    Raises:
        BadRequest: an output the model does not have.
    """
    available = list(model.outputs)
    if not request.outputs:
        return [RequestedOutput(name, binary=request.binary_output) for name in available]
    for output in request.outputs:
        if output.name not in available:
            raise _refusal(f"model {model.name!r} output", f"one of {available}", repr(output.name))
    return list(request.outputs)


def encode_infer_response(
    model: ModelSignature, request_id: str | None, outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput],
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for `requested` (from `requested_outputs`).

    Args:
        model: the model that ran (its name and version are echoed).
        request_id: the request's `id`, echoed when given.
        outputs: each requested output's values, [N, dim] per name.
        requested: which outputs, in which form, in order.

    Returns:
        The JSON response, followed by the binary outputs' bytes in order when any output is binary
        (then `Inference-Header-Content-Length` gives the JSON part's size), and the headers.
    """
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in requested:
        values = np.asarray(outputs[want.name], dtype=np.float32)
        if want.class_count:
            labels = model.labels if want.name in LABELLED_OUTPUTS else ()
            rows = classifications(values, want.class_count, labels)
            shape = [values.shape[0], min(want.class_count, values.shape[-1])]
            entry: dict[str, Any] = {"name": want.name, "datatype": "BYTES", "shape": shape}
            flat = [text for row in rows for text in row]
            raw = b"".join(_LENGTH.pack(len(b)) + b for b in (text.encode() for text in flat))
        else:
            entry = {"name": want.name, "datatype": "FP32", "shape": list(values.shape)}
            flat, raw = None, None
        if want.binary:
            raw = raw if raw is not None else values.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = flat if flat is not None else values.ravel()
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = entries
    header = dumps(document)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def classifications(values: np.ndarray, class_count: int, labels: tuple[str, ...] = ()) -> list[list[str]]:
    """Top `class_count` entries of each row as Triton writes them: "score:index" or "score:index:label".

    The score is the output's own value (a probability for `probabilities`, a logit for `logits`),
    in C's `%f` format, as Triton's `std::to_string` prints it; ties keep the lower index first, as
    `/classify` orders them.
    """
    best, scores = top_k(values, class_count)
    return [
        [f"{score:f}:{i}" + (f":{labels[i]}" if labels else "") for i, score in zip(row.tolist(), row_scores.tolist())]
        for row, row_scores in zip(best, scores)
    ]


def _expect(ok: bool, what: str, expected: str, got: str) -> None:
    # Not `assert`: request checks must survive `python -O`.
    if not ok:
        raise _refusal(what, expected, got)


def _refusal(what: str, expected: str, got: str) -> BadRequest:
    # OIP clients show only "error": the message itself must say what was expected.
    return BadRequest(f"{what}: expected {expected}, got {got}", expected=expected, got=got)


def _is_count(value: Any) -> bool:
    """A JSON non-negative integer (JSON true/false decode to bool, an int subclass: not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_length(value: str | int | None, body_size: int) -> int:
    if value is None:
        return body_size
    text = str(value).strip()
    # The length cap keeps int() from refusing (or spending time on) a thousands-digit number.
    _expect(text.isascii() and text.isdigit() and len(text) <= 18, "Inference-Header-Content-Length",
            "a non-negative integer", repr(value)[:40])
    size = int(text)
    _expect(size <= body_size, "Inference-Header-Content-Length",
            f"at most the body's {body_size} bytes", f"{size}")
    return size


def _parameters(holder: dict, where: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    _expect(isinstance(parameters, dict), f"{where}'s 'parameters'", "a JSON object", repr(parameters)[:80])
    return parameters


def _input(spec: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    """One input from its JSON spec and, if it says so, the binary data at `offset`."""
    _expect(isinstance(spec, dict), "each input", "a JSON object", repr(spec)[:80])
    name = spec.get("name")
    _expect(isinstance(name, str) and bool(name), "an input's 'name'", "a non-empty string", repr(name))
    where = f"input '{name}'"
    datatype = spec.get("datatype")
    _expect(datatype == "BYTES" or datatype in NUMERIC_DATATYPES, f"{where} datatype",
            f"one of {['BYTES', *NUMERIC_DATATYPES]}", repr(datatype))
    shape = spec.get("shape")
    _expect(isinstance(shape, list) and all(_is_count(dim) for dim in shape), f"{where} shape",
            "a list of non-negative integers", repr(shape)[:80])
    count = math.prod(shape)
    parameters = _parameters(spec, where)
    size = parameters.get("binary_data_size")
    if "shared_memory_region" in parameters:
        raise _refusal(where, "data in the request (shared memory is not supported)",
                       "shared_memory_region")
    data: np.ndarray | list[str] | list[bytes]
    if size is None:
        _expect("data" in spec, where, "'data' or parameters.binary_data_size", "neither")
        data = _json_data(spec["data"], datatype, count, where)
    else:
        _expect("data" not in spec, where, "'data' or parameters.binary_data_size", "both")
        _expect(_is_count(size), f"{where} binary_data_size", "a non-negative integer", repr(size))
        _expect(offset + size <= len(binary), f"{where} binary data",
                f"{size} bytes at offset {offset}", f"{len(binary) - offset} bytes left in the body")
        data = _binary_data(binary[offset:offset + size], datatype, count, where)
        offset += size
    if isinstance(data, np.ndarray):
        data = data.reshape(shape)
    return InputTensor(name, datatype, tuple(shape), data), offset


def _json_data(data: Any, datatype: str, count: int, where: str) -> np.ndarray | list[str]:
    """A tensor's JSON `data`, flat or nested, row-major, with exactly `count` elements."""
    _expect(isinstance(data, list), f"{where} data", "a JSON array", type(data).__name__)
    if datatype == "BYTES":
        strings = _flatten(data)
        _expect(all(isinstance(s, str) for s in strings), f"{where} data", "strings for BYTES",
                "other JSON values")
        _expect(len(strings) == count, f"{where} data", f"{count} elements for its shape",
                f"{len(strings)}")
        return strings
    dtype = NUMERIC_DATATYPES[datatype]
    try:
        array = np.array(data)
    except ValueError:  # ragged nesting
        raise _refusal(f"{where} data", "a rectangular array of numbers", "ragged lists") from None
    # Empty data parses as float64 whatever the datatype; only its count matters.
    _expect(array.size == 0 or array.dtype.kind in _JSON_KINDS[dtype.kind], f"{where} data",
            f"{datatype} values", f"JSON values of numpy kind {array.dtype.kind!r}")
    _expect(array.size == count, f"{where} data", f"{count} elements for its shape", f"{array.size}")
    if array.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        _expect(info.min <= array.min() and array.max() <= info.max, f"{where} data",
                f"{datatype} values in [{info.min}, {info.max}]", "values out of range")
    return array.astype(dtype).ravel()


def _flatten(data: list) -> list:
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested array must not exhaust the recursion limit
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _binary_data(raw: memoryview, datatype: str, count: int, where: str) -> np.ndarray | list[bytes]:
    """A tensor's binary data: raw row-major values, or length-prefixed elements for BYTES."""
    if datatype != "BYTES":
        dtype = NUMERIC_DATATYPES[datatype]
        _expect(len(raw) == count * dtype.itemsize, f"{where} binary_data_size",
                f"{count} x {dtype.itemsize} = {count * dtype.itemsize} bytes for its shape and "
                f"datatype", f"{len(raw)}")
        return np.frombuffer(bytearray(raw), dtype=dtype)  # bytearray: a writable copy
    elements: list[bytes] = []
    position = 0
    while position < len(raw):
        _expect(position + _LENGTH.size <= len(raw), f"{where} BYTES element {len(elements)}",
                "a 4-byte length prefix", f"{len(raw) - position} bytes")
        (length,) = _LENGTH.unpack_from(raw, position)
        position += _LENGTH.size
        _expect(position + length <= len(raw), f"{where} BYTES element {len(elements)}",
                f"{length} bytes as its prefix says", f"{len(raw) - position} bytes left")
        elements.append(bytes(raw[position:position + length]))
        position += length
        _expect(len(elements) <= count, f"{where} binary data", f"{count} elements for its shape",
                "more")
    _expect(len(elements) == count, f"{where} binary data", f"{count} elements for its shape",
            f"{len(elements)}")
    return elements


def _requested(specs: Any, binary_default: bool) -> tuple[RequestedOutput, ...]:
    _expect(isinstance(specs, list), "'outputs'", "a list", type(specs).__name__)
    outputs: list[RequestedOutput] = []
    for spec in specs:
        _expect(isinstance(spec, dict), "each output", "a JSON object", repr(spec)[:80])
        name = spec.get("name")
        _expect(isinstance(name, str) and bool(name), "an output's 'name'", "a non-empty string",
                repr(name))
        _expect(all(o.name != name for o in outputs), "'outputs'", "each name once", f"{name!r} twice")
        parameters = _parameters(spec, f"output '{name}'")
        binary = parameters.get("binary_data", binary_default)
        _expect(isinstance(binary, bool), f"output '{name}' binary_data", "true or false", repr(binary))
        class_count = parameters.get("classification", 0)
        _expect(_is_count(class_count), f"output '{name}' classification", "a non-negative integer",
                repr(class_count))
        outputs.append(RequestedOutput(name, binary, class_count))
    return tuple(outputs)


def _text(element: bytes | str, name: str, index: int) -> str:
    """A text: JSON strings as they are, binary BYTES decoded as UTF-8."""
    if isinstance(element, str):
        return element
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _refusal(f"input '{name}' element {index}", "UTF-8 text",
                       f"an invalid byte at offset {error.start}") from None


def _image_bytes(element: bytes | str, name: str, index: int) -> bytes:
    """An encoded image: binary BYTES as sent, JSON strings base64-decoded."""
    if isinstance(element, bytes):
        return element
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise _refusal(
            f"input '{name}' element {index}",
            "a base64-encoded image in JSON (or raw bytes with the binary tensor data extension)",
            "a string that is not base64",
        ) from None
