"""A bounded map that forgets the least recently used entries first.

Two caches keep the outputs of a frozen computation per distinct input: the hf text tower's
sentence features (`text_hf.py`) and a locked image tower's features (`feature_cache.py`). Both
look up a batch at once: compute what is `missing`, `put` it, then `use` the whole batch, which
marks its keys most recent (in order of first appearance) and only then lets the oldest go.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from typing import Any


class LRU:
    def __init__(self, limit: int):
        self.limit = limit
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def missing(self, keys: Iterable[Hashable]) -> list:
        """The distinct `keys` not held, in order of first appearance."""
        return [key for key in dict.fromkeys(keys) if key not in self._entries]

    def put(self, key: Hashable, value: Any) -> None:
        """Hold `value` under `key` (a new key comes last; a held one keeps its place). Nothing is
        forgotten until the next `use`."""
        self._entries[key] = value

    def use(self, keys: list) -> list:
        """The values of `keys` (each must be held; repeats allowed); then the keys become the most
        recently used, and the oldest entries beyond `limit` are forgotten."""
        values = [self._entries[key] for key in keys]
        for key in dict.fromkeys(keys):
            self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return values

    def keys(self) -> Iterator[Hashable]:
        """Oldest first."""
        return iter(self._entries.keys())

    def values(self) -> Iterator[Any]:
        return iter(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
