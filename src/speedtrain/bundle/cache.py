"""The LRU result cache of the server and the :class:`~speedtrain.bundle.predictor.Predictor`: thread-safe, counted.

    cache = LRUCache(2)                   # capacity 0 turns it off: nothing is kept, every lookup misses
    cache.put_many([("a", 1), ("b", 2)])
    cache.get_many(["a", "c"])            # [1, None]: "a" is now the most recent, "b" goes out first
    cache.info()                          # {"hits": 1, "misses": 1, "size": 2, "capacity": 2}

``None`` means "not cached", so it cannot be a cached value. One lock around each call: the Predictor is called
from several threads, the server's event loop only takes it uncontended.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any


class LRUCache:
    """Key -> value, least recently used out first, with hit and miss counts.

    Args:
        capacity: values kept; 0 turns the cache off.
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity={capacity} must be >= 0 (0 turns the cache off)")
        self.capacity = capacity
        self.hits = self.misses = 0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: list) -> list:
        """The value of each key, ``None`` where it is not cached; the found ones become the most recent."""
        if not self.capacity:
            self.count_misses(len(keys))
            return [None] * len(keys)
        data = self._data
        with self._lock:
            found = [data.get(k) for k in keys]
            hits = 0
            for k, value in zip(keys, found):
                if value is not None:
                    data.move_to_end(k)
                    hits += 1
            self.hits += hits
            self.misses += len(keys) - hits
        return found

    def put_many(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        """Keep each ``(key, value)`` as the most recent, then drop the least recent beyond ``capacity``."""
        if not self.capacity:
            return
        data = self._data
        with self._lock:
            for k, value in items:
                data[k] = value
                data.move_to_end(k)
            while len(data) > self.capacity:
                data.popitem(last=False)

    def get(self, key: Hashable) -> Any:
        """The value of ``key``, or ``None``."""
        return self.get_many([key])[0]

    def put(self, key: Hashable, value: Any) -> None:
        self.put_many([(key, value)])

    def count_misses(self, n: int) -> None:
        """Count ``n`` misses without looking (a caller that skips the lookup when the cache is off)."""
        with self._lock:
            self.misses += n

    def info(self) -> dict:
        """Hits, misses, current size and capacity."""
        return {"hits": self.hits, "misses": self.misses, "size": len(self._data), "capacity": self.capacity}
