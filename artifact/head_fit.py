"""Fitting a linear head on backbone embeddings: softmax regression in numpy, never torch.

One fit for every head graft makes: `graft train` (a feature-extract run's head, a fine-tune's
warm-up) calls `fit_softmax`, `POST /heads` calls `fit_head`, which adds a cross-validated accuracy
estimate. The model is multinomial logistic regression on standardised embeddings (per-dimension
mean and standard deviation of the fitted images), minimised with L-BFGS on the mean cross-entropy
plus an L2 penalty, with an analytic gradient. The optimum is unique (the problem is strictly
convex in the weights), so a head does not depend on a learning rate, a schedule or a seed.

NOTE: the L-BFGS loop is written here (`_minimise`, scipy's defaults and stopping rule) rather than
taken from scipy or scikit-learn: scipy was 145 MB of installed files plus 30 MB of bytecode in a
container image budgeted at 600 MB, for this one call. A test checks it reaches scipy's optimum.

Standardising makes one penalty strength suit every backbone's embedding scale and conditions the
problem, which matters most with few images per class.

The accuracy estimate is stratified k-fold cross-validation, k = min(5, smallest class count):
each fold holds out about 1/k of every class, a head is fitted on the rest with the same settings
(including its own standardisation), and the held-out predictions of all folds are pooled. The
returned head is then fitted on all images.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from graft.artifact.errors import GraftError

DEFAULT_L2 = 0.1
"""Penalty on the mean cross-entropy's weights (0.5 * l2 * ||W||^2), on standardised features.
Chosen on Fashion-MNIST Lite0 embeddings over k = 5..100 images per class: held-out accuracy is
flat (within 0.01) from 0.01 to 1, and stronger penalties converge in fewer steps."""
MAX_FOLDS = 5
MAX_ITERATIONS = 500
FTOL = 1e-7
"""L-BFGS stops when the loss improves by less than this (relative): far below what moves an argmax."""
GTOL = 1e-5
"""... or when no gradient component exceeds this (scipy's default)."""
MEMORY = 10
"""Correction pairs L-BFGS keeps (scipy's default)."""
STD_FLOOR = 0.1
"""A dimension's std is floored at this fraction of the mean std: a dimension (nearly) constant on
the fitted images must not turn into a huge feature on other images."""


class HeadFitError(GraftError, ValueError):
    """Embeddings or labels a head cannot be fitted on; `expected` and `got` say why."""

    def __init__(self, *, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


@dataclass(frozen=True)
class SoftmaxHead:
    """A fitted head: logits = ((x - mean) / scale) @ weights.T + bias.

    Attributes:
        weights: float32 [C, D].
        bias: float32 [C].
        mean: float32 [D], the fitted images' embedding mean.
        scale: float32 [D], their (floored) standard deviation.
        iterations: L-BFGS iterations the fit took.
    """

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    iterations: int

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return ((embeddings - self.mean) / self.scale) @ self.weights.T + self.bias

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight [C, D], bias [C]) of the same map on raw embeddings, in float64: the
        standardisation folded in, for a plain linear layer."""
        weight = self.weights.astype(np.float64) / self.scale
        return weight, self.bias - weight @ self.mean


@dataclass(frozen=True)
class FitResult:
    """A head fitted on labelled embeddings, with an honest estimate of its accuracy.

    Attributes:
        head: the head fitted on all images; outputs in `classes` order.
        classes: the label of each output, sorted.
        accuracy_estimate: cross-validated accuracy in 0..1.
        estimate_method: how `accuracy_estimate` was measured, in words.
        images_per_class: label -> number of fitted images.
        seconds: wall time of the fit, cross-validation included.
    """

    head: SoftmaxHead
    classes: tuple[str, ...]
    accuracy_estimate: float
    estimate_method: str
    images_per_class: dict[str, int]
    seconds: float


def fit_softmax(embeddings: np.ndarray, targets: np.ndarray, num_classes: int, *,
                l2: float = DEFAULT_L2) -> SoftmaxHead:
    """Fit a softmax-regression head on raw backbone embeddings.

    Args:
        embeddings: float [N, D], the backbone's `embedding` output (not L2-normalised).
        targets: int [N], each image's class in 0..num_classes-1.
        num_classes: C, the head's outputs; every class needs at least one image.
        l2: weight penalty on the standardised problem.

    Raises:
        HeadFitError: bad shapes or values, fewer than 2 classes, a class without images.
    """
    x = _checked_embeddings(embeddings)
    y = np.asarray(targets)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise HeadFitError(expected=f"one integer target per image ({len(x)})", got=f"{y.dtype} shape {list(y.shape)}")
    if num_classes < 2:
        raise HeadFitError(expected="at least 2 classes", got=str(num_classes))
    if y.min() < 0 or y.max() >= num_classes:
        raise HeadFitError(expected=f"targets in 0..{num_classes - 1}", got=f"{y.min()}..{y.max()}")
    empty = np.flatnonzero(np.bincount(y, minlength=num_classes) == 0)
    if len(empty):
        raise HeadFitError(expected="images of every class", got=f"none of class {', '.join(map(str, empty))}")
    with _single_blas_thread():
        return _fit(x, y, num_classes, l2)


def fit_head(
    embeddings: np.ndarray,
    labels: Sequence[str],
    *,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    max_folds: int = MAX_FOLDS,
) -> FitResult:
    """Fit a head on labelled embeddings, with a cross-validated accuracy; the fit `POST /heads` runs.

    Args:
        embeddings: float [N, D], the backbone artifact's `embedding` output (not L2-normalised).
        labels: one class name per embedding, in the same order.
        seed: seeds the assignment of images to cross-validation folds.
        l2: weight penalty on the standardised problem.
        max_folds: at most this many cross-validation folds.

    Raises:
        HeadFitError: counts differ, fewer than 2 classes, a class with a single image, bad values.
    """
    started = time.perf_counter()
    x, y, classes = _labelled(embeddings, labels)
    counts = np.bincount(y, minlength=len(classes))
    folds = int(min(max_folds, counts.min()))
    predictions = np.empty(len(y), dtype=np.int64)
    with _single_blas_thread():
        for held_out in _stratified_folds(y, folds, np.random.default_rng(seed)):
            train = np.ones(len(y), dtype=bool)
            train[held_out] = False
            predictions[held_out] = _fit(x[train], y[train], len(classes), l2).logits(x[held_out]).argmax(1)
        head = _fit(x, y, len(classes), l2)
    return FitResult(
        head=head,
        classes=classes,
        accuracy_estimate=float(np.mean(predictions == y)),
        estimate_method=f"stratified {folds}-fold cross-validation on the {len(y)} fitted images",
        images_per_class={label: int(count) for label, count in zip(classes, counts)},
        seconds=time.perf_counter() - started,
    )


def _checked_embeddings(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise HeadFitError(expected="embeddings of shape [N, D] with N, D > 0", got=f"shape {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise HeadFitError(expected="finite embeddings", got="NaN or infinity")
    return x


def _labelled(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    x = _checked_embeddings(embeddings)
    labels = [str(label) for label in labels]
    if len(labels) != len(x):
        raise HeadFitError(expected=f"one label per image ({len(x)} labels)", got=f"{len(labels)} labels")
    if not all(label.strip() for label in labels):
        raise HeadFitError(expected="non-empty labels", got="an empty label")
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise HeadFitError(expected="images of at least 2 classes", got=f"1 class ({classes[0]!r})")
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    single = [label for label, count in zip(classes, counts) if count < 2]
    if single:
        raise HeadFitError(expected="at least 2 images per class", got=f"1 image of {', '.join(map(repr, single))}")
    return x, y, classes


def _stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Held-out index sets: each class's shuffled members dealt round-robin over `folds` folds."""
    parts: list[list[int]] = [[] for _ in range(folds)]
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        for position, index in enumerate(members):
            parts[position % folds].append(int(index))
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, scale): z = (x - mean) / scale in float32, the statistics in float64.

    float32 for the [N, D] array and the fit's products on it: half the memory and time of float64
    on a large training set (`x.std` would add a float64 copy of `x`); the loss and parameters stay
    float64, and the rounding is far below what the stopping rule resolves.
    """
    mean = x.mean(0, dtype=np.float64)
    z = np.subtract(x, mean, dtype=np.float32)
    std = np.sqrt(np.einsum("ij,ij->j", z, z, dtype=np.float64) / len(z))
    floor = STD_FLOOR * float(std.mean()) if float(std.mean()) > 0 else 1.0
    scale = np.maximum(std, floor)
    z /= scale.astype(np.float32)
    return z, mean, scale


def _fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> SoftmaxHead:
    """The head minimising mean cross-entropy + 0.5 l2 ||W||^2 on standardised `x`."""
    z, mean, scale = _standardised(x)
    basis = None
    if z.shape[1] > z.shape[0]:
        # Fewer images than dimensions: the penalised optimum's weights lie in the span of the
        # images (the penalty kills any other component), so fit in an orthonormal basis of that
        # span (n coordinates instead of D) and map back. Exact, and each step is D/n times cheaper.
        _, _, basis = np.linalg.svd(z, full_matrices=False)
        z = z @ basis.T
    n, dim = z.shape
    rows = np.arange(n)

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights = params[: num_classes * dim].reshape(num_classes, dim)
        logits = z @ weights.T.astype(np.float32) + params[num_classes * dim :]
        logits -= logits.max(1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        loss = -log_probs[rows, y].mean() + 0.5 * l2 * np.sum(weights * weights)
        delta = np.exp(log_probs)  # d loss / d logits: (softmax - one-hot) / n
        delta[rows, y] -= 1.0
        delta /= n
        grad_w = delta.T.astype(np.float32) @ z + l2 * weights
        return float(loss), np.concatenate([grad_w.ravel(), delta.sum(0)])

    params, iterations = _minimise(loss_and_grad, np.zeros(num_classes * (dim + 1)))
    weights = params[: num_classes * dim].reshape(num_classes, dim)
    if basis is not None:
        weights = weights @ basis
    return SoftmaxHead(weights=weights.astype(np.float32), bias=params[num_classes * dim :].astype(np.float32),
                       mean=mean.astype(np.float32), scale=scale.astype(np.float32), iterations=iterations)


def _minimise(loss_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
              x: np.ndarray) -> tuple[np.ndarray, int]:
    """L-BFGS (Nocedal & Wright, algorithm 7.4) with a backtracking Armijo line search; stops on
    FTOL, GTOL or MAX_ITERATIONS and returns the point and the iterations taken. The problem is
    smooth and strictly convex, so no Wolfe search is needed: a pair that would break the curvature
    condition is just not kept."""
    loss, grad = loss_and_grad(x)
    pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=MEMORY)
    iteration = 0
    while iteration < MAX_ITERATIONS and np.abs(grad).max() > GTOL:
        iteration += 1
        direction = -_inverse_hessian_times(grad, pairs)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            direction, slope = -grad / np.linalg.norm(grad), -float(np.linalg.norm(grad))
        step = 1.0
        while True:
            candidate = x + step * direction
            new_loss, new_grad = loss_and_grad(candidate)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = candidate - x, new_grad - grad
        if float(s @ y) > 1e-10:
            pairs.append((s, y, 1.0 / float(s @ y)))
        improved = loss - new_loss
        x, loss, grad = candidate, new_loss, new_grad
        if improved <= FTOL * max(abs(loss), abs(loss + improved), 1.0):
            break
    return x, iteration


def _inverse_hessian_times(grad: np.ndarray, pairs: deque) -> np.ndarray:
    """The two-loop recursion; with no pairs yet, a first step of unit length along the gradient."""
    if not pairs:
        return grad / np.linalg.norm(grad)
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    s, y, _ = pairs[-1]
    r = q * (float(s @ y) / float(y @ y))
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        r += s * (alpha - rho * float(y @ r))
    return r


# ---- BLAS threads --------------------------------------------------------------------------------
_BLAS_LOCK = threading.Lock()


@contextmanager
def _single_blas_thread() -> Iterator[None]:
    """Run BLAS on one thread during a fit (threadpoolctl).

    NOTE: a fit's products are thin (N x D by D x C, C classes) and there are hundreds of them:
    BLAS worker threads cost more in hand-offs than they save, and on a busy 2-core machine (the
    service's own inference, or another job) a fit took 10x or more longer with them. The limit is
    process-wide, so concurrent fits share one lock; other numpy users meanwhile run
    single-threaded too, which only affects their speed.
    """
    with _BLAS_LOCK, threadpool_limits(limits=1, user_api="blas"):
        yield
