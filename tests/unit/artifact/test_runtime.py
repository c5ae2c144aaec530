"""The runner against the artifact run directly in ONNX Runtime: padding and chunking change nothing."""

import numpy as np
import onnxruntime as ort
import pytest

from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.postprocess import softmax
from graft.artifact.preprocessing import preprocess_batch
from graft.artifact.runtime import Runner, session_providers


class Artifact:
    def __init__(self, directory):
        self.directory = directory
        self.manifest = read_manifest(directory)


@pytest.fixture(scope="module")
def classifier(lite0_classifier):
    return Artifact(lite0_classifier)


@pytest.fixture(scope="module")
def batch(classifier, photos):
    return preprocess_batch(list(photos.values()), classifier.manifest.preprocessing)  # 5 photos


@pytest.fixture(scope="module")
def direct(classifier, batch):
    session = ort.InferenceSession(str(classifier.directory / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in classifier.manifest.io.outputs]
    return dict(zip(names, session.run(names, {classifier.manifest.io.input.name: batch})))


def _runner(model, buckets, pad=None):
    return Runner(model.directory, model.manifest, buckets=buckets, providers=("CPUExecutionProvider",), intra_op_threads=1,
                  trt_cache_dir=None, pad_to_buckets=pad)


@pytest.mark.parametrize(("buckets", "pad"), [((1, 2, 4, 8), True), ((1, 2), None)],
                         ids=["padded-to-8", "chunked-by-2"])
def test_infer_matches_a_plain_session(classifier, batch, direct, buckets, pad):
    outputs = _runner(classifier, buckets, pad).infer(batch)
    assert set(outputs) == {"logits", "embedding"}
    for name, expected in direct.items():
        assert outputs[name].shape == expected.shape
        np.testing.assert_allclose(outputs[name], expected, atol=1e-4)


def test_postprocess_gives_one_softmax_per_item(classifier, batch, direct):
    runner = _runner(classifier, (1, 2, 4, 8))
    results = runner.postprocess(runner.infer(batch[:3]))
    assert len(results) == 3
    for result, logits in zip(results, direct["logits"][:3]):
        assert result["probabilities"].sum() == pytest.approx(1.0, abs=1e-5)
        assert result["probabilities"].argmax() == logits.argmax()
        assert result["embedding"].shape == (classifier.manifest.embedding_dim,)
    assert runner.bucket(3) == 4 and runner.bucket(20) == 8
    assert not runner.pad, "the CPU provider gains nothing from padding"


def test_infer_refuses_a_wrong_input_shape(classifier):
    with pytest.raises(ValueError, match=r"expected inputs of shape \[N, 3, 224, 224\]"):
        _runner(classifier, (1,)).infer(np.zeros((1, 3, 32, 32), np.float32))


def test_softmax_is_stable_for_large_logits():
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]], atol=1e-6)


def test_without_a_gpu_only_the_cpu_provider_is_tried(tmp_path):
    chosen = session_providers(
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        trt_cache_dir=tmp_path, input_name="input", input_shape=(3, 224, 224), max_batch=8,
    )
    from graft.artifact.runtime import gpu_present

    if gpu_present():
        pytest.skip("a GPU is present")
    assert chosen == [("CPUExecutionProvider", {})]
