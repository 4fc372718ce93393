"""Which systems a customer's estate holds, in page order, and which changes were made to it.

An ``Estate`` is immutable: every change makes a new one with ``version`` + 1, and a reader
that took one estate sees one consistent version even while a handler thread mutates.

Systems are named by a *key*: resource id = ``ID_BASE + id_offset + key``, and page order is
key order (so resource-id order). The systems generated at the start have keys ``0, 10, 20
...`` (serial ``key // ID_STRIDE``); systems added later get fresh keys (never used by any
system, present or removed) that sort into the place they were added at, and the next serial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

ID_BASE = 10001
ID_STRIDE = 10
WHERE = ("front", "middle", "end")


class PatchChange(Protocol):
    """A tenant change rewriting patch lists (see ``changes.py``)."""

    def apply(self, key: int, patches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``patches`` of system ``key`` after this change."""
        ...


@dataclass(frozen=True)
class Estate:
    """One version of an estate: ``managed`` keys in page order, every system ever ``added``
    (key -> serial), the patch ``changes`` in the order made, and the systems ``emptied`` of
    all their patches by a change (DCAPI omits them)."""

    base_count: int
    managed: tuple[int, ...]
    version: int = 0
    added: Mapping[int, int] = field(default_factory=dict)
    changes: tuple[PatchChange, ...] = ()
    emptied: frozenset[int] = frozenset()

    @classmethod
    def initial(cls, base_count: int) -> Estate:
        """The estate as generated: ``base_count`` systems, no change."""
        return cls(base_count, tuple(range(0, base_count * ID_STRIDE, ID_STRIDE)))

    def _is_base(self, key: int) -> bool:
        return key % ID_STRIDE == 0 and 0 <= key < self.base_count * ID_STRIDE

    def serial(self, key: int) -> int:
        """The generator serial of system ``key``; KeyError if no system ever had it."""
        serial = self.added.get(key)
        if serial is not None:
            return serial
        if self._is_base(key):
            return key // ID_STRIDE
        raise KeyError(key)

    def used(self, key: int) -> bool:
        """Whether a system, present or removed, ever had ``key``."""
        return key in self.added or self._is_base(key)

    def _used_range(self) -> tuple[int, int]:
        keys = list(self.added)
        if self.base_count:
            keys += [0, (self.base_count - 1) * ID_STRIDE]
        return (min(keys), max(keys)) if keys else (0, -ID_STRIDE)

    def fresh_keys(self, where: str, count: int, floor: int) -> list[int]:
        """``count`` unused keys, ascending, that sort ``where`` ("front", "middle", "end") in
        page order; none below ``floor``. ValueError when the front has no room left."""
        low, high = self._used_range()
        if where == "end" or count <= 0:
            return [high + ID_STRIDE * (j + 1) for j in range(max(0, count))]
        if where == "front":
            step = ID_STRIDE if low - ID_STRIDE * count >= floor else 1
            if low - step * count < floor:
                raise ValueError(f"no room for {count} more systems at the front")
            return [low - step * (count - j) for j in range(count)]
        keys: list[int] = []
        n = len(self.managed)
        for gap in range(max(1, n // 2), n):  # the gap before managed[gap], outward
            keys += self._free_between(self.managed[gap - 1], self.managed[gap], count - len(keys))
            if len(keys) == count:
                return keys
        return keys + self.fresh_keys("end", count - len(keys), floor)

    def _free_between(self, low: int, high: int, want: int) -> list[int]:
        free = [k for k in range(low + 1, high) if not self.used(k)]
        if len(free) <= want:
            return free
        return [free[(j + 1) * len(free) // (want + 1)] for j in range(want)]

    def keys_at(self, where: str, count: int) -> list[int]:
        """The ``count`` present keys at the front, middle or end of page order."""
        count = max(0, min(count, len(self.managed)))
        start = {"front": 0, "middle": (len(self.managed) - count) // 2,
                 "end": len(self.managed) - count}[where]
        return list(self.managed[start:start + count])

    def with_systems_added(self, keys: list[int]) -> Estate:
        """A new version with systems at these fresh ``keys`` (serials continue)."""
        first = self.base_count + len(self.added)
        added = {**self.added, **{k: first + j for j, k in enumerate(keys)}}
        return replace(self, managed=tuple(sorted((*self.managed, *keys))), added=added,
                       version=self.version + 1)

    def with_systems_removed(self, keys: Iterable[int]) -> Estate:
        """A new version without the systems at ``keys``."""
        gone = set(keys)
        return replace(self, managed=tuple(k for k in self.managed if k not in gone),
                       version=self.version + 1)

    def with_change(self, change: PatchChange, emptied: Iterable[int] = ()) -> Estate:
        """A new version with ``change`` applied after the others; ``emptied`` are systems it
        left without patches."""
        return replace(self, changes=(*self.changes, change), emptied=self.emptied | set(emptied),
                       version=self.version + 1)
