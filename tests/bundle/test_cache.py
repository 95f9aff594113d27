"""LRUCache: least recently used out first, counted hits and misses, safe from several threads."""

from __future__ import annotations

import threading

import pytest

from speedtrain.bundle.cache import LRUCache


def test_lru_cache_evicts_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    off = LRUCache(0)
    off.put("a", 1)
    assert off.get("a") is None


def test_counts_hits_and_misses_and_storing_again_refreshes():
    cache = LRUCache(2)
    cache.put_many([("a", 1), ("b", 2)])
    assert cache.get_many(["a", "x", "b"]) == [1, None, 2]
    cache.put("a", 10)  # "a" is now the most recent: "b" goes out first
    cache.put("c", 3)
    assert cache.get_many(["b", "a"]) == [None, 10]
    assert cache.info() == {"hits": 3, "misses": 2, "size": 2, "capacity": 2}
    off = LRUCache(0)
    assert off.get_many(["a", "b"]) == [None, None]
    off.count_misses(3)
    assert off.info() == {"hits": 0, "misses": 5, "size": 0, "capacity": 0}
    with pytest.raises(ValueError, match="capacity=-1"):
        LRUCache(-1)


def test_threads_share_a_cache_without_losing_counts():
    cache, lookups = LRUCache(64), 2000

    def work(seed: int):
        for i in range(lookups):
            key = (seed * 7 + i) % 100
            if cache.get(key) is None:
                cache.put(key, key)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = cache.info()
    assert info["hits"] + info["misses"] == 4 * lookups and info["size"] == 64
