"""What turns a model's outputs into answers, written once (torch-free).

`/classify`, `/embed`, `/v2` and `graft batch` all call these, so they agree by construction, not
because a test compares them: the softmax, the top-k ranking, L2 normalisation, the batch sizes a
session is padded to, and the name and version a model or a head is served under.
"""

from __future__ import annotations

import numpy as np

from graft.artifact.heads import Head
from graft.artifact.manifest import Manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best entries of each row, best first: (indices, scores), each [..., min(k, C)].

    A stable sort of the negated scores, so ties keep the lower index first.
    """
    best = np.argsort(-scores, axis=-1, kind="stable")[..., : min(k, scores.shape[-1])]
    return best, np.take_along_axis(scores, best, axis=-1)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below `max_batch_size`, then `max_batch_size`: the batch sizes sessions are
    padded to and warmed at."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def served_identity(manifest: Manifest, head: Head | None = None) -> tuple[str, str]:
    """(name, version) of a backbone artifact, or of a head on it (`backbone+head` for both)."""
    if head is None:
        return manifest.name, manifest.version
    return f"{manifest.name}+{head.name}", f"{manifest.version}+{head.spec.version}"
