"""Text on a real `graft serve`: all-MiniLM-L6-v2 beside an image model, same routes, batcher and limits."""

from __future__ import annotations

import concurrent.futures

import httpx
import numpy as np
import pytest

from graft.artifact.manifest import read_manifest
from graft.artifact.runtime import open_session
from graft.artifact.text import TextTokenizer, pad
from tests import synthetic
from tests.e2e.conftest import png, serve, started, upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXT_MODEL = "all-minilm-l6-v2"
SENTENCES = [
    "The committee approved the new budget after a long debate on Tuesday evening.",
    "A young boy is kicking a red ball across the wet grass in the park.",
    "Researchers found that the vaccine reduced hospital admissions by nearly half.",
    "Heavy rain is expected across the region for the rest of the week.",
]
MAX_CHARS = 5000
TOKEN = "e2e-text-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def text_server(text_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-server")
    image_model = folder / synthetic.NAME
    synthetic.write_artifact(image_model)
    # Two batches in flight per model: the concurrent-clients test checks answers stay unmixed with them.
    running = serve([text_artifact, image_model], folder / "server.log", GRAFT_MAX_TEXT_CHARS=str(MAX_CHARS),
                    GRAFT_MAX_IMAGES="16", GRAFT_ADMIN_TOKEN=TOKEN, GRAFT_HEADS_DIR=str(folder / "heads"),
                    GRAFT_CONCURRENT_BATCHES="2")
    with started(running):
        yield running


def post(server, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def reference(text_artifact, texts: list[str]) -> np.ndarray:
    """The artifact run directly: its tokenizer, one padded batch, ONNX Runtime, no HTTP."""
    manifest = read_manifest(text_artifact)
    ids, mask = pad([e.ids for e in TextTokenizer(text_artifact / "tokenizer.json", manifest.text).encode(texts)], 0)
    return open_session(text_artifact / "model.onnx").run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]


def test_embed_texts_matches_the_artifact_and_keeps_order(text_server, text_artifact):
    answer = post(text_server, "/embed", {"texts": SENTENCES, "model": TEXT_MODEL})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["dim"], body["truncated"]) == (TEXT_MODEL, 384, [])
    vectors = np.asarray(body["embeddings"], np.float32)
    assert np.abs(vectors - reference(text_artifact, SENTENCES)).max() < 1e-5


def test_concurrent_clients_get_their_own_texts_back(text_server, text_artifact):
    """16 clients at once: batched together, padded to each batch's longest text, answers unmixed."""
    texts = [SENTENCES[i % 4] + f" Item {i}." for i in range(16)]
    expected = reference(text_artifact, texts)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: post(text_server, "/embed", {"texts": [t], "model": TEXT_MODEL}), texts))
    got = np.asarray([a.json()["embeddings"][0] for a in answers], np.float32)
    assert np.abs(got - expected).max() < 1e-5
    assert "2 batch(es) at once per model" in text_server.log.read_text()  # the setting reached the worker


def test_truncation_is_stated_and_can_be_refused(text_server):
    long = " ".join(SENTENCES * 6)  # ~1800 characters, ~330 tokens
    answer = post(text_server, "/embed", {"texts": ["short one", long], "model": TEXT_MODEL})
    assert answer.status_code == 200 and answer.json()["truncated"] == [1]
    refused = post(text_server, "/embed", {"texts": ["short one", long], "model": TEXT_MODEL, "truncate": False})
    assert refused.status_code == 400
    assert "at most 256 tokens" in refused.json()["expected"] and "[1]" in refused.json()["got"]
    binary = post(text_server, "/embed", {"texts": [long], "model": TEXT_MODEL, "encoding": "binary"})
    assert binary.headers["Graft-Truncated"] == "0" and len(binary.content) == 384 * 4


@pytest.mark.parametrize("body, expected, got", [
    ({"texts": ["fine", ""]}, "non-empty texts", "index 1"),
    ({"texts": []}, '{"texts"', "texts"),
    ({"texts": "not a list"}, '{"texts"', "texts"),
    ({"texts": [3]}, '{"texts"', "texts.0"),
    ({"texts": ["x"], "images": []}, "fields among", "images"),
    ({"texts": ["x" * (MAX_CHARS + 1)]}, f"at most {MAX_CHARS} characters", "texts[0]"),
    ({"texts": ["x"] * 17}, "at most 16 texts", "17"),
])
def test_bad_text_requests_are_400_saying_what_was_expected(text_server, body, expected, got):
    answer = post(text_server, "/embed", {"model": TEXT_MODEL, **body})
    assert answer.status_code == 400, answer.text
    assert expected in answer.json()["expected"] and got in answer.json()["got"]


def test_non_utf8_body_is_400(text_server):
    raw = b'{"texts": ["caf\xe9"], "model": "' + TEXT_MODEL.encode() + b'"}'
    answer = httpx.post(text_server.url + "/embed", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "texts" in answer.json()["expected"]


def test_images_and_texts_each_go_to_their_own_kind_of_model(text_server):
    images_to_text = httpx.post(text_server.url + "/embed", files=upload(png((32, 32))), data={"model": TEXT_MODEL})
    assert images_to_text.status_code == 400
    assert "JSON body" in images_to_text.json()["expected"] and images_to_text.json()["got"] == "images"
    texts_to_image = post(text_server, "/embed", {"texts": ["a cat"], "model": synthetic.NAME})
    assert texts_to_image.status_code == 400 and "multipart form" in texts_to_image.json()["expected"]
    classify = post(text_server, "/classify", {"texts": ["a cat"], "model": TEXT_MODEL})
    assert classify.status_code == 400 and "classifier" in classify.json()["expected"]
    assert httpx.post(text_server.url + "/embed", files=upload(png((32, 32))),
                      data={"model": synthetic.NAME}).status_code == 200


def test_models_lists_the_text_model(text_server):
    models = {m["name"]: m for m in httpx.get(text_server.url + "/models").json()["models"]}
    assert models[TEXT_MODEL]["modality"] == "text" and models[TEXT_MODEL]["max_tokens"] == 256
    assert models[synthetic.NAME]["modality"] == "image" and models[synthetic.NAME]["max_tokens"] is None


def test_a_text_head_fitted_through_the_api_classifies_held_out_news(text_server):
    """Five BBC News articles per class (headline and first paragraph) fit a head; 100 others are classified."""
    from graft.benchmarks.text_heads import bbc_news, split

    texts, labels = bbc_news()
    pools, test = split(labels, seed=0)
    chosen = np.concatenate([pool[:5] for pool in pools.values()])
    fitted = post(text_server, "/heads", {"name": "bbc-news", "backbone": TEXT_MODEL, "texts": [texts[i] for i in chosen],
                                          "labels": [labels[i] for i in chosen]}, headers=ADMIN)
    assert fitted.status_code == 201, fitted.text
    assert fitted.json()["backbone"] == TEXT_MODEL and sorted(fitted.json()["labels"]) == sorted(pools)
    held_out = np.random.default_rng(1).choice(test, 100, replace=False)
    predicted = []
    for start in range(0, 100, 16):
        answer = post(text_server, "/classify", {"model": "bbc-news", "top_k": 2,
                                                  "texts": [texts[i] for i in held_out[start:start + 16]]})
        assert answer.status_code == 200, answer.text
        predicted += [top[0]["label"] for top in answer.json()["predictions"]]
    assert np.mean([p == labels[i] for p, i in zip(predicted, held_out)]) >= 0.6  # chance: 0.2; the bench measured 0.76
    models = {m["name"]: m for m in httpx.get(text_server.url + "/models").json()["models"]}
    assert [head["name"] for head in models[TEXT_MODEL]["heads"]] == ["bbc-news"]


@pytest.mark.parametrize("body, expected", [
    ({"name": "h", "texts": ["a", "b"], "labels": ["x"]}, "one 'labels' value per text"),
    ({"name": "h", "texts": ["a", "b"], "labels": ["x", "y"], "backbone": synthetic.NAME}, "multipart form"),
    ({"name": "h", "texts": ["a", ""], "labels": ["x", "y"], "backbone": TEXT_MODEL}, "non-empty texts"),
    ({"name": "h", "images": ["a"], "labels": ["x"]}, "fields among"),
])
def test_bad_text_head_fits_are_400(text_server, body, expected):
    answer = post(text_server, "/heads", {"backbone": TEXT_MODEL, **body}, headers=ADMIN)
    assert answer.status_code == 400 and expected in answer.json()["expected"], answer.text


def test_openai_client_embeds_texts(text_server, text_artifact):
    """The official client (base64 by default) gets the artifact's embeddings and real token counts;
    a text over the model's limit is refused, as OpenAI refuses one over its context."""
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=text_server.url + "/v1", api_key="unused")
    response = client.embeddings.create(model=TEXT_MODEL, input=SENTENCES)
    vectors = np.asarray([item.embedding for item in response.data], np.float32)
    assert np.abs(vectors - reference(text_artifact, SENTENCES)).max() < 1e-5
    assert len(SENTENCES) * 10 < response.usage.prompt_tokens < len(SENTENCES) * 40
    with pytest.raises(BadRequestError, match="at most 256 tokens"):
        client.embeddings.create(model=TEXT_MODEL, input=[" ".join(SENTENCES * 6)])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_sends_bytes_strings(text_server, text_artifact, binary):
    """/v2 with the real tritonclient: BYTES texts (raw UTF-8 in the binary extension, JSON strings
    otherwise) give the artifact's embeddings; the metadata names the one input."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    with triton.InferenceServerClient(text_server.url.removeprefix("http://"), network_timeout=60) as client:
        metadata = client.get_model_metadata(TEXT_MODEL)
        assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [("texts", "BYTES")]
        tensor = triton.InferInput("texts", [len(SENTENCES)], "BYTES")
        tensor.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=np.object_), binary_data=binary)
        result = client.infer(TEXT_MODEL, [tensor])
        assert np.abs(result.as_numpy("embedding") - reference(text_artifact, SENTENCES)).max() < 1e-5
        bad = triton.InferInput("texts", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"caf\xe9"], dtype=np.object_), binary_data=True)
        with pytest.raises(InferenceServerException, match="UTF-8"):
            client.infer(TEXT_MODEL, [bad])
