"""`/v1/embeddings` with the official `openai` client against `graft serve` with API keys set.

The client is pointed at the server with `base_url`, authenticates as OpenAI clients do
(`Authorization: Bearer`), and embeds real photos with both encodings (it asks for base64 unless
told otherwise); every answer must equal `/embed`'s for the same photos. Its errors must reach it
in OpenAI's shape, so it raises its own typed exceptions with the server's message.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import EMBEDDER, serve, started

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

KEY = "e2e-api-key"
CLASSIFIER = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def keyed_server(lite0_classifier, lite0_embedder, tmp_path_factory):
    with started(serve([lite0_classifier, lite0_embedder], tmp_path_factory.mktemp("openai") / "server.log",
                       GRAFT_API_KEYS=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def client(keyed_server):
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def jpegs(photo_jpegs) -> list[bytes]:
    return [path.read_bytes() for path in photo_jpegs.values()]


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def embedded(server, jpegs, model: str) -> np.ndarray:
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(jpegs)]
    response = httpx.post(server.url + "/embed", files=files, data={"model": model},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"])


@pytest.mark.parametrize("model", [CLASSIFIER, EMBEDDER])
@pytest.mark.parametrize("encoding", ["float", None])  # None: the client's default, base64
def test_the_openai_client_gets_embeds_vectors(keyed_server, client, jpegs, model, encoding):
    options = {} if encoding is None else {"encoding_format": encoding}
    response = client.embeddings.create(model=model, input=[data_uri(jpeg) for jpeg in jpegs], **options)
    assert response.model == model and [item.index for item in response.data] == list(range(len(jpegs)))
    vectors = np.asarray([item.embedding for item in response.data])
    np.testing.assert_allclose(vectors, embedded(keyed_server, jpegs, model), atol=1e-6)


def test_one_bare_base64_string_is_one_embedding(client, jpegs):
    response = client.embeddings.create(model=EMBEDDER, input=base64.b64encode(jpegs[0]).decode())
    assert len(response.data) == 1 and len(response.data[0].embedding) == 1280


def test_models_lists_what_it_embeds(client):
    assert [model.id for model in client.models.list()] == [CLASSIFIER, EMBEDDER]
    assert client.models.retrieve(EMBEDDER).owned_by == "graft"


def test_a_wrong_key_is_an_authentication_error(keyed_server, jpegs):
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as caught:
            stranger.embeddings.create(model=CLASSIFIER, input=data_uri(jpegs[0]))
    assert caught.value.code == "invalid_api_key" and "GRAFT_API_KEYS" in caught.value.message


@pytest.mark.parametrize("inputs, error, fragment", [
    (lambda jpegs: [data_uri(jpegs[0]), base64.b64encode(b"not an image").decode()],
     openai.BadRequestError, "input[1]: expected an image file"),
    (lambda jpegs: ["https://example.com/cat.jpg"], openai.BadRequestError, "never fetches URLs"),
    (lambda jpegs: ["data:text/plain;base64,aGk="], openai.BadRequestError, "input[0]: expected a data:image"),
    (lambda jpegs: [], openai.BadRequestError, "got an empty list"),
    (lambda jpegs: [data_uri(jpegs[0])] * 9, openai.BadRequestError, "at most 8 images"),
    (lambda jpegs: [[1, 2, 3]], openai.BadRequestError, "input[0]: expected an image"),
    (lambda jpegs: [data_uri(jpegs[0] + bytes(4 << 20))], openai.APIStatusError, "request body of at most 4194304 bytes"),
], ids=["not-an-image", "url", "text-uri", "empty", "too-many", "tokens", "too-large"])
def test_bad_input_reaches_the_client_as_its_own_error(keyed_server, client, jpegs, inputs, error, fragment):
    with pytest.raises(error) as caught:
        client.embeddings.create(model=CLASSIFIER, input=inputs(jpegs), encoding_format="float")
    assert fragment in caught.value.message and 400 <= caught.value.status_code < 500
    assert set(caught.value.body) == {"message", "type", "param", "code"}  # the client unwraps "error"
    assert len(client.embeddings.create(model=CLASSIFIER, input=data_uri(jpegs[1])).data) == 1


def test_dimensions_other_than_the_models_are_refused(client, jpegs):
    with pytest.raises(openai.BadRequestError, match="dimensions: expected 1280"):
        client.embeddings.create(model=CLASSIFIER, input=data_uri(jpegs[0]), dimensions=256)
    assert len(client.embeddings.create(model=CLASSIFIER, input=data_uri(jpegs[0]), dimensions=1280).data) == 1
