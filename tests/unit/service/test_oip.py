"""The Open Inference Protocol layer against tritonclient's own request builder and response parser.

Requests are built with `tritonclient.http` (`InferInput`, `InferRequestedOutput`,
`InferenceServerClient.generate_request_body`), responses read back with
`InferenceServerClient.parse_response_body`, so both sides are the real client's wire format. Inputs
are JPEGs and the tiny synthetic artifact's outputs run in ONNX Runtime.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from graft.artifact.image import decode_image
from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.postprocess import softmax
from graft.artifact.preprocessing import preprocess
from graft.service.errors import BadRequest, NotFound
from graft.service.oip import (
    InferRequest,
    ModelSignature,
    ModelStatistics,
    RequestedOutput,
    classifications,
    encode_infer_response,
    index_ready_only,
    model_config,
    model_input,
    model_metadata,
    model_statistics,
    parse_infer_request,
    repository_index,
    requested_outputs,
    server_metadata,
)
from tests.synthetic import LABELS, NAME
from tests.unit.service.conftest import jpeg_bytes


@pytest.fixture(scope="module")
def manifest(tiny_classifier):
    return read_manifest(tiny_classifier)


@pytest.fixture(scope="module")
def model(manifest):
    return ModelSignature.from_manifest(NAME, manifest)


@pytest.fixture(scope="module")
def jpegs(pictures) -> list[bytes]:
    return [jpeg_bytes(pictures[name]) for name in ("red", "green")]


@pytest.fixture(scope="module")
def pixels(jpegs, manifest) -> np.ndarray:
    spec = manifest.preprocessing
    return np.stack([preprocess(decode_image(data, min_side=spec.resize_size), spec) for data in jpegs])


@pytest.fixture(scope="module")
def outputs(tiny_classifier, manifest, pixels) -> dict[str, np.ndarray]:
    """What the model computes for the two pictures: logits, probabilities and the raw embedding."""
    session = ort.InferenceSession(str(tiny_classifier / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.io.outputs]
    results = dict(zip(names, session.run(names, {manifest.io.input.name: pixels})))
    results["probabilities"] = softmax(results["logits"])
    return results


def images_input(jpegs: list[bytes], *, binary: bool = True, shape: list[int] | None = None) -> InferInput:
    """A BYTES input of encoded images; JSON strings must be text, so JSON carries base64."""
    elements = jpegs if binary else [base64.b64encode(data) for data in jpegs]
    array = np.array(elements, dtype=np.object_).reshape(shape or [len(jpegs)])
    tensor = InferInput("images", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def tensor_input(pixels: np.ndarray, *, binary: bool = True) -> InferInput:
    tensor = InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def text(element: bytes | str) -> str:
    """A BYTES element as tritonclient returns it: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def parse(inputs, outputs=None, **kwargs) -> InferRequest:
    body, header_length = InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return parse_infer_request(body, header_length)


def respond(model, request: InferRequest, outputs: dict[str, np.ndarray]):
    """Encode a response and read it back with tritonclient, as `client.infer` would."""
    body, headers = encode_infer_response(model, request.id, outputs, requested_outputs(request, model))
    return InferenceServerClient.parse_response_body(
        body, header_length=headers.get("Inference-Header-Content-Length")
    ), headers


# Inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_images_arrive_as_sent(model, jpegs, binary):
    request = parse([images_input(jpegs, binary=binary)])
    assert request.inputs[0].datatype == "BYTES" and request.inputs[0].shape == (2,)
    assert model_input(request, model) == ("images", jpegs)


def test_bytes_images_accept_a_trailing_unit_axis(model, jpegs):
    """[N, 1] is what a client built from the Triton config (`dims [1]`) sends."""
    assert model_input(parse([images_input(jpegs, shape=[2, 1])]), model) == ("images", jpegs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_fp32_arrives_unchanged(model, pixels, binary):
    kind, array = model_input(parse([tensor_input(pixels, binary=binary)]), model)
    assert kind == "tensor" and array.dtype == np.float32
    np.testing.assert_array_equal(array, pixels)


def test_request_id_outputs_and_parameters_are_parsed(jpegs):
    request = parse(
        [images_input(jpegs)],
        [InferRequestedOutput("probabilities", class_count=3), InferRequestedOutput("embedding", binary_data=False)],
        request_id="req-7",
    )
    assert request.id == "req-7"
    assert request.outputs == (
        RequestedOutput("probabilities", binary=True, class_count=3),
        RequestedOutput("embedding", binary=False, class_count=0),
    )
    assert parse([images_input(jpegs)]).binary_output  # tritonclient asks binary when no outputs are named


def test_nested_json_data_is_row_major(model, pixels):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.tolist()}]}
    _, array = model_input(parse_infer_request(json.dumps(body).encode()), model)
    np.testing.assert_array_equal(array, pixels)


# Outputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_outputs_round_trip_through_tritonclient(model, jpegs, outputs, binary):
    names = ["logits", "probabilities", "embedding"]
    request = parse([images_input(jpegs)], [InferRequestedOutput(n, binary_data=binary) for n in names],
                    request_id="abc")
    result, headers = respond(model, request, outputs)
    assert ("Inference-Header-Content-Length" in headers) is binary
    response = result.get_response()
    assert response["id"] == "abc" and response["model_name"] == model.name
    assert response["model_version"] == model.version
    assert [o["name"] for o in response["outputs"]] == names
    for name in names:
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == outputs[name].shape
        np.testing.assert_array_equal(got, outputs[name])


def test_no_outputs_named_sends_all_of_them_binary(model, jpegs, outputs):
    result, headers = respond(model, parse([images_input(jpegs)]), outputs)
    assert "Inference-Header-Content-Length" in headers
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits", "probabilities", "embedding"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_an_embedder_has_only_the_embedding(model, jpegs, outputs):
    embedder = dataclasses.replace(model, name="embedder", labels=())
    assert list(embedder.outputs) == ["embedding"]
    result, _ = respond(embedder, parse([images_input(jpegs)]), {"embedding": outputs["embedding"]})
    np.testing.assert_array_equal(result.as_numpy("embedding"), outputs["embedding"])
    with pytest.raises(BadRequest, match="one of \\[.embedding.\\]"):
        requested_outputs(parse([images_input(jpegs)], [InferRequestedOutput("logits")]), embedder)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_formats_as_triton(model, jpegs, outputs, binary):
    request = parse([images_input(jpegs)], [InferRequestedOutput("probabilities", binary, class_count=3)])
    result, _ = respond(model, request, outputs)
    got = result.as_numpy("probabilities")
    assert got.shape == (2, 3)
    for row, probabilities in zip(got, outputs["probabilities"]):
        best = np.argsort(-probabilities, kind="stable")[:3]
        expected = [f"{probabilities[i]:.6f}:{i}:{model.labels[i]}" for i in best]
        assert [text(element) for element in row] == expected
    top = text(got[0][0]).split(":")
    assert top[2] == "red" and float(top[0]) > 0.5


def test_classification_on_logits_ranks_logit_values_and_caps_at_the_class_count(model, outputs):
    rows = classifications(outputs["logits"], 5000, model.labels)
    assert len(rows[0]) == len(model.labels)
    score, index, label = rows[0][0].split(":", 2)
    assert int(index) == int(np.argmax(outputs["logits"][0])) and label == model.labels[int(index)]
    assert score == f"{outputs['logits'][0, int(index)]:f}"
    assert classifications(np.array([[0.5, 0.25]], np.float32), 1) == [["0.500000:0"]]


def test_unknown_output_lists_the_available_ones(model, jpegs):
    request = parse([images_input(jpegs)], [InferRequestedOutput("scores")])
    with pytest.raises(BadRequest) as caught:
        requested_outputs(request, model)
    assert caught.value.status == 400 and "probabilities" in caught.value.expected


# Metadata ---------------------------------------------------------------------------------------


def test_metadata_config_and_versions(model, manifest):
    height, width = manifest.preprocessing.input_size
    metadata = model_metadata(model)
    assert metadata["versions"] == [manifest.version]
    assert {(i["name"], i["datatype"]) for i in metadata["inputs"]} == {("images", "BYTES"), ("input", "FP32")}
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "logits": [-1, len(LABELS)], "probabilities": [-1, len(LABELS)], "embedding": [-1, manifest.embedding_dim],
    }
    assert "exactly one input" in metadata["parameters"]["inputs"]
    config = model_config(model, max_batch_size=8)
    assert config["max_batch_size"] == 8
    assert [i["data_type"] for i in config["input"]] == ["TYPE_STRING", "TYPE_FP32"]
    assert config["input"][1]["dims"] == [3, height, width]
    # A client that fills every input the config requires must not send both.
    assert all(i["optional"] is True for i in config["input"])
    assert set(server_metadata("1.0")["extensions"]) >= {"binary_tensor_data", "classification", "statistics"}
    model.check_version(None)
    model.check_version(manifest.version)
    with pytest.raises(NotFound) as caught:
        model.check_version("999")
    assert caught.value.status == 404


def test_statistics_entry_has_tritons_fields_in_nanoseconds(model):
    stats = ModelStatistics(images=10, batches=2, refused=3, queued=10, queue_s=0.5, prepared=11,
                            prepare_s=0.25, batch_s=0.125)
    entry = model_statistics(model, stats)
    assert (entry["name"], entry["version"]) == (model.name, model.version)
    assert (entry["inference_count"], entry["execution_count"]) == (10, 2)
    durations = entry["inference_stats"]
    assert set(durations) == {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                              "cache_hit", "cache_miss"}
    assert durations["queue"] == {"count": 10, "ns": 500_000_000}
    assert durations["compute_input"] == {"count": 11, "ns": 250_000_000}
    assert durations["compute_infer"] == {"count": 2, "ns": 125_000_000}
    assert durations["success"] == {"count": 10, "ns": 875_000_000}  # the stages' sum
    assert durations["fail"] == {"count": 3, "ns": 0}
    assert all(isinstance(value, int) for d in durations.values() for value in d.values())
    empty = model_statistics(model, ModelStatistics())
    assert empty["inference_count"] == 0 and empty["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_repository_index_and_its_request(model):
    head = dataclasses.replace(model, name="pets", version="abc")
    assert repository_index([model, head], "READY") == [
        {"name": model.name, "version": model.version, "state": "READY", "reason": ""},
        {"name": "pets", "version": "abc", "state": "READY", "reason": ""},
    ]
    assert index_ready_only(b"") is False  # tritonclient sends an empty body
    assert index_ready_only(b'{"ready": true}') is True
    assert index_ready_only(b"{}") is False
    for body in (b"{", b"[true]", b'{"ready": 1}'):
        with pytest.raises(BadRequest):
            index_ready_only(body)


# Malformed requests -------------------------------------------------------------------------------


def fp32(shape, **extra) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": shape, **extra}


def document(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def with_binary(header: dict, data: bytes, header_length_delta: int = 0) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + data, len(head) + header_length_delta


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


ZEROS = b"\0" * 4  # one FP32 element's bytes

MALFORMED = {
    "not json": (b"{inputs: oops", None),
    "json array": (b"[1, 2]", None),
    "not utf-8": (b"\xff\xfe\xfd", None),
    "deeply nested": (b"[" * 100000 + b"]" * 100000, None),
    "no inputs": (b"{}", None),
    "empty inputs": (document(), None),
    "input not an object": (document(3), None),
    "input without name": (document({"datatype": "FP32", "shape": [1], "data": [1]}), None),
    "unknown datatype": (document(fp32([1], datatype="FLOAT", data=[1.0])), None),
    "bf16": (document(fp32([1], datatype="BF16", data=[1.0])), None),
    "negative dim": (document(fp32([-1, 3], data=[1.0] * 3)), None),
    "fractional dim": (document(fp32([1.5], data=[1.0])), None),
    "boolean dim": (document(fp32([True], data=[1.0])), None),
    "shape not a list": (document(fp32(4, data=[1.0] * 4)), None),
    "too few elements": (document(fp32([2, 3], data=[1.0] * 5)), None),
    "too many elements": (document(fp32([2], data=[1.0] * 3)), None),
    "ragged data": (document(fp32([2, 2], data=[[1.0, 2.0], [3.0]])), None),
    "strings as fp32": (document(fp32([2], data=["1.0", "2.0"])), None),
    "null in data": (document(fp32([2], data=[1.0, None])), None),
    "data not a list": (document(fp32([1], data=1.0)), None),
    "int out of range": (document({"name": "i", "datatype": "UINT8", "shape": [1], "data": [300]}), None),
    "bytes not strings": (document({"name": "b", "datatype": "BYTES", "shape": [1], "data": [1]}), None),
    "bytes count": (document({"name": "b", "datatype": "BYTES", "shape": [2], "data": ["a"]}), None),
    "no data": (document(fp32([1])), None),
    "data and binary": with_binary({"inputs": [fp32([1], data=[1.0], parameters={"binary_data_size": 4})]}, ZEROS),
    "shared memory": (document(fp32([1], parameters={"shared_memory_region": "r"})), None),
    "header length past the body": with_binary({"inputs": [fp32([1], parameters={"binary_data_size": 4})]}, ZEROS, 100),
    "header length short": with_binary({"inputs": [fp32([1], parameters={"binary_data_size": 4})]}, ZEROS, -1),
    "header length not a number": (document(fp32([1], data=[1.0])), "twelve"),
    "header length negative": (document(fp32([1], data=[1.0])), "-5"),
    "header length huge": (document(fp32([1], data=[1.0])), "9" * 5000),
    "binary without header length": (document(fp32([1], parameters={"binary_data_size": 4})) + b"\0" * 4, None),
    "binary size not a count": with_binary({"inputs": [fp32([1], parameters={"binary_data_size": "4"})]}, b"\0" * 4),
    "binary size vs shape": with_binary({"inputs": [fp32([2], parameters={"binary_data_size": 4})]}, b"\0" * 4),
    "binary size past the body": with_binary({"inputs": [fp32([2], parameters={"binary_data_size": 8})]}, b"\0" * 4),
    "binary left over": with_binary({"inputs": [fp32([1], parameters={"binary_data_size": 4})]}, b"\0" * 8),
    "bytes prefix past the data": with_binary(
        {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]},
        struct.pack("<I", 1000) + b"abcd"),
    "bytes short prefix": with_binary(
        {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 7}}]},
        length_prefixed(b"a") + b"\1\0"),
    "bytes element count": with_binary(
        {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": 10}}]},
        length_prefixed(b"a", b"b")),
    "id not a string": (document(fp32([1], data=[1.0]), id=7), None),
    "parameters not an object": (document(fp32([1], data=[1.0]), parameters=[1]), None),
    "binary_data_output not a bool": (document(fp32([1], data=[1.0]), parameters={"binary_data_output": "yes"}), None),
    "outputs not a list": (document(fp32([1], data=[1.0]), outputs={"name": "logits"}), None),
    "output without name": (document(fp32([1], data=[1.0]), outputs=[{}]), None),
    "output twice": (document(fp32([1], data=[1.0]), outputs=[{"name": "logits"}, {"name": "logits"}]), None),
    "classification negative": (
        document(fp32([1], data=[1.0]), outputs=[{"name": "logits", "parameters": {"classification": -1}}]), None),
    "classification not an int": (
        document(fp32([1], data=[1.0]), outputs=[{"name": "logits", "parameters": {"classification": "3"}}]), None),
    "binary_data not a bool": (
        document(fp32([1], data=[1.0]), outputs=[{"name": "logits", "parameters": {"binary_data": 1}}]), None),
}


@pytest.mark.parametrize("body, header_length", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_bad_requests(body, header_length):
    with pytest.raises(BadRequest) as caught:
        parse_infer_request(body, header_length)
    error = caught.value
    assert error.status == 400 and error.body()["error"]


def images(*elements: str, shape=None) -> bytes:
    shape = [len(elements)] if shape is None else shape
    return document({"name": "images", "datatype": "BYTES", "shape": shape, "data": list(elements)})


def test_model_input_refuses_what_the_model_cannot_run(model, pixels, jpegs):
    height, width = model.input_size
    refused = {
        "two inputs": parse([images_input(jpegs), tensor_input(pixels)]),
        "int64": parse_infer_request(document({"name": "x", "datatype": "INT64", "shape": [1], "data": [1]})),
        "fp64": parse([InferInput("x", list(pixels.shape), "FP64").set_data_from_numpy(pixels.astype(np.float64))]),
        "fp32 wrong size": parse([tensor_input(pixels[:, :, : height - 1, : width - 1])]),
        "fp32 wrong rank": parse([tensor_input(pixels[0])]),
        "fp32 empty batch": parse([tensor_input(pixels[:0])]),
        "fp32 nan": parse([tensor_input(np.full_like(pixels, np.nan))]),
        "bytes 2-d": parse_infer_request(images("a", "b", "c", "d", shape=[2, 2])),
        "bytes empty batch": parse_infer_request(images(shape=[0])),
        "bytes scalar": parse_infer_request(images("a", shape=[])),
        "json string not base64": parse_infer_request(images("not base64!")),
        "json string not ascii": parse_infer_request(images("é" * 4)),
    }
    for case, request in refused.items():
        with pytest.raises(BadRequest) as caught:
            model_input(request, model)
        assert caught.value.status == 400, case
    with pytest.raises(BadRequest, match="exactly one input"):
        model_input(refused["two inputs"], model)
