"""The LRU result cache of the server.
"""

from __future__ import annotations

from collections import OrderedDict


class LRUCache:
    """Text -> result, least recently used out first. Event-loop only (no lock)."""

    def __init__(self, size: int):
        self.size, self.data = size, OrderedDict()

    def get(self, key):
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.size:
            self.data[key] = value
            if len(self.data) > self.size:
                self.data.popitem(last=False)
