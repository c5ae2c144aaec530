"""The exact-content cache on its own: keys by content, model and version; LRU within a byte bound;
copies kept, not the batcher's views; off means every lookup misses."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from graft.service.cache import ENTRY_OVERHEAD, ResultCache

KEY_BYTES = len(ResultCache.keys("m", "v1", [b""])[0])


def result(value: float, dim: int = 256) -> dict[str, np.ndarray]:
    return {"embedding": np.full(dim, value, np.float32)}


def entry_bytes(dim: int = 256) -> int:
    return KEY_BYTES + ENTRY_OVERHEAD + 4 * dim


def lookup(cache: ResultCache, images: list[bytes], model: str = "m", version: str = "v1"):
    async def run():
        with ThreadPoolExecutor(1) as pool:
            return await cache.lookup(model, version, images, pool)

    return asyncio.run(run())


def test_keys_differ_by_content_model_and_version_only():
    (same,) = ResultCache.keys("m", "v1", [b"image"])
    assert ResultCache.keys("m", "v1", [bytearray(b"image")]) == [same]
    assert len({same, *ResultCache.keys("m", "v1", [b"image2"]), *ResultCache.keys("m2", "v1", [b"image"]),
                *ResultCache.keys("m", "v2", [b"image"])}) == 4


def test_a_stored_result_is_found_for_the_same_bytes_and_model_version_only():
    cache = ResultCache(1 << 20)
    keys, found = lookup(cache, [b"a", b"b"])
    assert found == [None, None]
    cache.put(keys[0], result(1.0))
    _, found = lookup(cache, [b"b", b"a", b"a"])
    assert found[0] is None and found[1] is found[2] and float(found[1]["embedding"][0]) == 1.0
    assert lookup(cache, [b"a"], version="v2")[1] == [None]  # a new model version never hits old entries
    assert lookup(cache, [b"a"], model="other")[1] == [None]


def test_the_least_recently_used_entries_go_first_within_the_byte_bound():
    cache = ResultCache(3 * entry_bytes())
    keys, _ = lookup(cache, [b"1", b"2", b"3", b"4"])
    for key, value in zip(keys[:3], (1.0, 2.0, 3.0)):
        cache.put(key, result(value))
    assert len(cache) == 3 and cache.bytes == 3 * entry_bytes()
    lookup(cache, [b"1"])  # now the most recently used
    cache.put(keys[3], result(4.0))
    _, found = lookup(cache, [b"1", b"2", b"3", b"4"])
    assert [None if r is None else float(r["embedding"][0]) for r in found] == [1.0, None, 3.0, 4.0]
    assert cache.bytes == 3 * entry_bytes() <= cache.max_bytes


def test_an_entry_larger_than_the_cache_is_not_kept_and_a_replaced_one_is_counted_once():
    cache = ResultCache(entry_bytes())
    (key,) = ResultCache.keys("m", "v1", [b"x"])
    cache.put(key, result(1.0, dim=257))
    assert len(cache) == 0 and cache.bytes == 0
    cache.put(key, result(1.0))
    cache.put(key, result(2.0))
    assert len(cache) == 1 and cache.bytes == entry_bytes()


def test_a_copy_is_kept_not_a_view_of_the_batch():
    cache = ResultCache(1 << 20)
    batch = np.zeros((32, 256), np.float32)
    (key,) = ResultCache.keys("m", "v1", [b"x"])
    cache.put(key, {"embedding": batch[3]})
    batch[3] = 7.0
    (found,) = lookup(cache, [b"x"])[1]
    assert found["embedding"].base is None and float(found["embedding"].max()) == 0.0
    assert cache.bytes == entry_bytes()  # the row's bytes, not the whole batch's


def test_off_means_no_keys_no_entries():
    cache = ResultCache(0)
    keys, found = lookup(cache, [b"a", b"b"])
    assert not cache.enabled and keys == [] and found == [None, None]
    cache.put(b"key", result(1.0))
    assert len(cache) == 0
