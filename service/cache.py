"""An exact-content cache of per-image model results (`GRAFT_CACHE_MB`; off by default).

An entry is keyed on a hash of the image's bytes plus the served model's name and version, so a
new model version never answers from an old one's entries. It holds the backbone's results
(`embedding`, and `logits`, `probabilities` for classifiers); heads are applied after it, to the
cached embedding, so a replaced head is never served stale either. A hit skips decoding,
preprocessing and the model, for `/classify`, `/embed`, `/v1/embeddings`, `/v2` (encoded images)
and head fits alike. Exact bytes only: a re-encoded or resized copy of an image is a miss.

In memory, one per worker, bounded by the bytes of its arrays (least recently used out first).
Only the event loop's thread reads and writes it; large requests are hashed in the decode pool.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from concurrent.futures import Executor

import numpy as np

from graft.service.metrics import metrics

# Requests up to this many image bytes are hashed on the event loop (BLAKE2b: well under a
# millisecond); a hop to the decode pool would cost more, and wait behind other requests' decoding.
INLINE_HASH_BYTES = 256 << 10
# Per entry beyond its arrays' bytes: the key, the dict and the array objects (about 0.5 KB in
# CPython 3.11 with numpy 2); counted so that a cache of tiny vectors stays bounded too.
ENTRY_OVERHEAD = 512

Result = dict[str, np.ndarray]


def _size(key: bytes, result: Result) -> int:
    return len(key) + ENTRY_OVERHEAD + sum(array.nbytes for array in result.values())


class ResultCache:
    """Per-image results by content, up to `max_bytes` (0: off, every lookup misses uncounted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, Result] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def keys(model: str, version: str, images: list[bytes]) -> list[bytes]:
        """One key per image: the model's name and version, then a 128-bit BLAKE2b of its bytes."""
        prefix = f"{model}\0{version}\0".encode()
        return [prefix + hashlib.blake2b(image, digest_size=16).digest() for image in images]

    async def lookup(
        self, model: str, version: str, images: list[bytes], executor: Executor,
    ) -> tuple[list[bytes], list[Result | None]]:
        """Each image's key and cached result (None: a miss); counted in `/metrics` by model."""
        if not self.enabled:
            return [], [None] * len(images)
        if sum(map(len, images)) <= INLINE_HASH_BYTES:
            keys = self.keys(model, version, images)
        else:  # hashlib releases the GIL on large buffers: megabytes hash off the event loop
            keys = await asyncio.get_running_loop().run_in_executor(executor, self.keys, model, version, images)
        results = [self._get(key) for key in keys]
        hits = sum(result is not None for result in results)
        lookups = metrics().cache_lookups
        lookups.labels(result="hit", model=model).inc(hits)
        lookups.labels(result="miss", model=model).inc(len(results) - hits)
        return keys, results

    def _get(self, key: bytes) -> Result | None:
        result = self._entries.get(key)
        if result is not None:
            self._entries.move_to_end(key)
        return result

    def put(self, key: bytes, result: Result) -> None:
        """Keep a copy of `result` (the batcher's arrays are views into its whole batch), dropping
        the least recently used entries until it fits; one larger than the cache is not kept."""
        if not self.enabled:
            return
        result = {name: np.array(array) for name, array in result.items()}
        size = _size(key, result)
        if size > self.max_bytes:
            return
        if (old := self._entries.pop(key, None)) is not None:
            self.bytes -= _size(key, old)
        while self.bytes + size > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= _size(evicted_key, evicted)
        self._entries[key] = result
        self.bytes += size
