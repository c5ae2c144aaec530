"""The one head fit (`graft train` and `POST /heads`): real Lite0 embeddings of Fashion-MNIST, the
numpy L-BFGS against scipy's, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graft.artifact import head_fit
from graft.artifact.errors import GraftError
from graft.artifact.head_fit import HeadFitError, fit_head, fit_softmax
from graft.artifact.heads import Provenance, make_head
from graft.artifact.manifest import read_manifest

PER_CLASS_FIT, PER_CLASS_TEST = 10, 20


@pytest.fixture(scope="module")
def fmnist_embeddings(lite0_embedder, tmp_path_factory):
    """Lite0 artifact embeddings of Fashion-MNIST test images: 10 per class to fit, 20 per class held out."""
    from graft.artifact.preprocessing import preprocess_batch
    from graft.artifact.runtime import Runner
    from graft.models.data import fashion_mnist

    manifest = read_manifest(lite0_embedder)
    runner = Runner(Path(lite0_embedder), manifest, buckets=(32,), providers=("CPUExecutionProvider",),
                    intra_op_threads=0, trt_cache_dir=tmp_path_factory.mktemp("trt"))
    images = fashion_mnist("t10k")
    rng = np.random.default_rng(0)
    picks = [rng.permutation(np.flatnonzero(images.targets == c))[: PER_CLASS_FIT + PER_CLASS_TEST] for c in range(10)]
    fit = np.concatenate([p[:PER_CLASS_FIT] for p in picks])
    test = np.concatenate([p[PER_CLASS_FIT:] for p in picks])

    def embed(indices):
        batch = preprocess_batch([images.image(i) for i in indices], manifest.preprocessing)
        return runner.infer(batch)["embedding"]

    labels = np.array(images.labels)
    return manifest, embed(fit), list(labels[images.targets[fit]]), embed(test), labels[images.targets[test]]


@pytest.mark.slow
def test_few_shot_head_on_real_embeddings(fmnist_embeddings):
    manifest, x, labels, test_x, test_labels = fmnist_embeddings
    result = fit_head(x, labels, seed=0)
    fitted = result.head
    assert result.classes == tuple(sorted(set(labels)))
    assert fitted.weights.shape == (10, manifest.embedding_dim) and fitted.weights.dtype == np.float32
    assert fitted.bias.shape == (10,) and fitted.mean.shape == fitted.scale.shape == (manifest.embedding_dim,)
    assert result.images_per_class == {label: PER_CLASS_FIT for label in result.classes}
    assert result.estimate_method.startswith("stratified 5-fold cross-validation")
    # The head artifact applies exactly the fitted map, on raw (unnormalised) embeddings.
    head = make_head("fmnist", result.classes, weight=fitted.weights, bias=fitted.bias, mean=fitted.mean,
                     scale=fitted.scale, backbone=manifest,
                     provenance=Provenance(source="api", num_images=len(labels), images_per_class=result.images_per_class,
                                           accuracy=result.accuracy_estimate, accuracy_method=result.estimate_method))
    predicted = np.array(result.classes)[head.apply(test_x).argmax(1)]
    accuracy = float(np.mean(predicted == test_labels))
    # 10 per class: the issue measured 0.76 on the full test split; 200 held-out images vary by a few points.
    assert accuracy >= 0.65, accuracy
    assert abs(result.accuracy_estimate - accuracy) <= 0.15  # the estimate is honest, not the training accuracy
    again = fit_head(x, labels, seed=0)
    np.testing.assert_array_equal(again.head.weights, fitted.weights)
    assert again.accuracy_estimate == result.accuracy_estimate
    # Training's entry point fits the same head; folded, it is the same map on raw embeddings.
    classes = list(result.classes)
    direct = fit_softmax(x, np.array([classes.index(label) for label in labels]), len(classes))
    np.testing.assert_array_equal(direct.weights, fitted.weights)
    weight, bias = direct.folded()
    np.testing.assert_allclose(test_x @ weight.T + bias, fitted.logits(test_x), rtol=1e-4, atol=1e-4)


def test_lbfgs_reaches_scipys_optimum(fmnist_embeddings):
    """graft's numpy L-BFGS against scipy's L-BFGS-B on the same penalised problem: the same loss
    (to 1e-5) and the same held-out predictions."""
    optimize = pytest.importorskip("scipy.optimize")
    _, x, labels, test_x, _ = fmnist_embeddings
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    z, mean, scale = head_fit._standardised(x)
    n, dim, c = len(y), z.shape[1], len(classes)
    onehot = np.eye(c)[y]

    def loss_and_grad(params):
        weights, bias = params[: c * dim].reshape(c, dim), params[c * dim :]
        logits = z @ weights.T + bias
        log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        delta = (np.exp(log_probs) - onehot) / n
        loss = -np.sum(onehot * log_probs) / n + 0.5 * head_fit.DEFAULT_L2 * np.sum(weights * weights)
        return loss, np.concatenate([(delta.T @ z + head_fit.DEFAULT_L2 * weights).ravel(), delta.sum(0)])

    ours, iterations = head_fit._minimise(loss_and_grad, np.zeros(c * (dim + 1)))
    assert 0 < iterations < head_fit.MAX_ITERATIONS
    theirs = optimize.minimize(loss_and_grad, np.zeros(c * (dim + 1)), jac=True, method="L-BFGS-B",
                               options={"maxiter": head_fit.MAX_ITERATIONS, "ftol": head_fit.FTOL}).x
    assert loss_and_grad(ours)[0] == pytest.approx(loss_and_grad(theirs)[0], rel=1e-5)
    test_z = (test_x - mean) / scale

    def predict(params):
        return (test_z @ params[: c * dim].reshape(c, dim).T + params[c * dim :]).argmax(1)

    np.testing.assert_array_equal(predict(ours), predict(theirs))


@pytest.mark.slow
def test_two_images_per_class_give_two_folds(fmnist_embeddings):
    _, x, labels, _, _ = fmnist_embeddings
    keep = np.concatenate([np.flatnonzero(np.array(labels) == c)[:2] for c in sorted(set(labels))[:3]])
    result = fit_head(x[keep], [labels[i] for i in keep])
    assert result.estimate_method.startswith("stratified 2-fold") and len(result.classes) == 3


X = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)


@pytest.mark.parametrize(
    "embeddings, labels, expected, got",
    [
        (X, ["a"] * 6, "images of at least 2 classes", "1 class ('a')"),
        (X, ["a"] * 5 + ["b"], "at least 2 images per class", "1 image of 'b'"),
        (X, ["a", "b"] * 2, "one label per image (6 labels)", "4 labels"),
        (X[:, :0], ["a", "b"] * 3, "embeddings of shape [N, D] with N, D > 0", "shape [6, 0]"),
        (np.where(np.eye(6, 8) > 0, np.nan, X), ["a", "b"] * 3, "finite embeddings", "NaN or infinity"),
        (X, ["a", "b", "a", "b", "a", " "], "non-empty labels", "an empty label"),
    ],
)
def test_bad_requests_say_expected_and_got(embeddings, labels, expected, got):
    with pytest.raises(HeadFitError) as error:
        fit_head(embeddings, labels)
    assert isinstance(error.value, GraftError)  # the service answers it as 400, the CLI as a one-line error
    assert (error.value.expected, error.value.got) == (expected, got)
    assert str(error.value) == f"expected {expected}, got {got}"


@pytest.mark.parametrize(
    "targets, num_classes, expected, got",
    [
        (np.array([0, 1, 0, 1, 0, 2]), 2, "targets in 0..1", "0..2"),
        (np.array([0, 1, 0, 1, 0, 1]), 3, "images of every class", "none of class 2"),
        (np.array([0, 1, 0, 1]), 2, "one integer target per image (6)", "int64 shape [4]"),
        (np.zeros(6), 2, "one integer target per image (6)", "float64 shape [6]"),
        (np.zeros(6, dtype=int), 1, "at least 2 classes", "1"),
    ],
)
def test_bad_targets_say_expected_and_got(targets, num_classes, expected, got):
    with pytest.raises(HeadFitError) as error:
        fit_softmax(X, targets, num_classes)
    assert (error.value.expected, error.value.got) == (expected, got)


def test_fit_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, graft.artifact.head_fit; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
