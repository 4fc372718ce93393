"""Tenant changes as scenario data: what a mutation changes, in which customer, and when.

JSON form (every part optional, at least one change)::

    {"after_page_requests": 3, "customer": "Acme",
     "remove_systems": 30 | {"count": 2, "where": "middle"} | {"resource_ids": [10011, "10021"]},
     "add_systems": 45 | {"count": 5, "where": "front"},
     "remove_patches": {"systems": 4, "per_system": 2},
     "add_patches": {"systems": 4, "per_system": 2},
     "flip_status": {"share": 0.05} | {"count": 40, "direction": "to_installed"}}

A bare number means the historic forms: systems removed from the front, added at the end.
The parts are applied in the order listed above. ``after_page_requests`` (scenario mutations)
applies the change once that many page requests have arrived; ``Simulator.mutate`` and
``POST /_sim/mutate`` take the same fields without it and apply them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .changes import DIRECTIONS
from .estate import WHERE


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def _object(value: Any, what: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a number or an object, not {value!r}")  # noqa: TRY004 - bad scenario JSON is a ValueError
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(sorted(unknown))}")
    return value


@dataclass(frozen=True)
class SystemsChange:
    """Systems added or removed: ``count`` at ``where`` ("front", "middle", "end"), or (removal
    only) the systems with these ``resource_ids``."""

    count: int = 0
    where: str = "end"
    resource_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, what: str, default_where: str) -> SystemsChange:
        """From a bare count or an object; raises ValueError."""
        if isinstance(value, SystemsChange):
            return value
        if not isinstance(value, dict):
            return cls(_count(value, what), default_where)
        allowed = {"count", "where", "resource_ids"} if what == "remove_systems" else {"count", "where"}
        d = _object(value, what, allowed)
        if "resource_ids" in d:
            if set(d) != {"resource_ids"} or not isinstance(d["resource_ids"], list):
                raise ValueError("remove_systems by id is {\"resource_ids\": [ids]} alone")
            return cls(where=default_where, resource_ids=tuple(str(r) for r in d["resource_ids"]))
        where = d.get("where", default_where)
        if where not in WHERE:
            raise ValueError(f"{what} where must be one of {', '.join(WHERE)}, not {where!r}")
        return cls(_count(d.get("count", 0), f"{what} count"), where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        if self.resource_ids:
            return {"resource_ids": list(self.resource_ids)}
        return {"count": self.count, "where": self.where}


@dataclass(frozen=True)
class PatchChurn:
    """Patches added to or removed from ``systems`` DCAPI systems, ``per_system`` each."""

    systems: int
    per_system: int = 1

    @classmethod
    def parse(cls, value: Any, what: str) -> PatchChurn:
        """From ``{"systems": N, "per_system": M}``; raises ValueError."""
        if isinstance(value, PatchChurn):
            return value
        d = _object(value, what, {"systems", "per_system"})
        if "systems" not in d:
            raise ValueError(f"{what} needs 'systems'")
        return cls(_count(d["systems"], f"{what} systems"),
                   _count(d.get("per_system", 1), f"{what} per_system"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"systems": self.systems, "per_system": self.per_system}


@dataclass(frozen=True)
class StatusFlip:
    """(System, patch) pairs flipped Missing -> Installed and/or Installed -> Missing
    (``direction`` "both", "to_installed", "to_missing"): a ``share`` of the pairs of each
    kind, or ``count`` pairs of each kind."""

    share: float | None = None
    count: int | None = None
    direction: str = "both"

    @classmethod
    def parse(cls, value: Any) -> StatusFlip:
        """From ``{"share": x}`` or ``{"count": n}``, optionally ``direction``; raises ValueError."""
        if isinstance(value, StatusFlip):
            return value
        d = _object(value, "flip_status", {"share", "count", "direction"})
        if ("share" in d) == ("count" in d):
            raise ValueError("flip_status needs exactly one of 'share' or 'count'")
        share = d.get("share")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0 <= share <= 1):
            raise ValueError(f"flip_status share must be between 0 and 1, not {share!r}")
        direction = d.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ValueError(f"flip_status direction must be one of {', '.join(DIRECTIONS)}")
        count = None if "count" not in d else _count(d["count"], "flip_status count")
        return cls(None if share is None else float(share), count, direction)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        amount = {"share": self.share} if self.share is not None else {"count": self.count}
        return {**amount, "direction": self.direction}


@dataclass(frozen=True)
class Mutation:
    """One tenant change; see the module docstring for the JSON form."""

    after_page_requests: int | None = None
    customer: str | None = None
    remove_systems: SystemsChange | None = None
    add_systems: SystemsChange | None = None
    remove_patches: PatchChurn | None = None
    add_patches: PatchChurn | None = None
    flip_status: StatusFlip | None = None

    @classmethod
    def parse(cls, value: Any, triggered: bool = True) -> Mutation:
        """From the JSON form (or a Mutation). ``triggered``: a scenario mutation, which needs
        ``after_page_requests``; otherwise one applied at once, which must not have it."""
        if isinstance(value, Mutation):
            d = {f.name: getattr(value, f.name) for f in fields(cls)}
            d = {k: v for k, v in d.items() if v is not None}
        else:
            d = _object(value, "mutation", {f.name for f in fields(cls)})
        trigger = d.get("after_page_requests")
        if triggered and (isinstance(trigger, bool) or not isinstance(trigger, int)):
            raise ValueError("a scenario mutation needs an integer 'after_page_requests'")
        if not triggered and trigger is not None:
            raise ValueError("a mutation applied at once takes no 'after_page_requests'")
        customer = d.get("customer")
        if customer is not None and not isinstance(customer, str):
            raise ValueError("mutation customer must be a name")
        m = cls(trigger, customer,
                _opt(d, "remove_systems", lambda v: SystemsChange.parse(v, "remove_systems", "front")),
                _opt(d, "add_systems", lambda v: SystemsChange.parse(v, "add_systems", "end")),
                _opt(d, "remove_patches", lambda v: PatchChurn.parse(v, "remove_patches")),
                _opt(d, "add_patches", lambda v: PatchChurn.parse(v, "add_patches")),
                _opt(d, "flip_status", StatusFlip.parse))
        if not m.changes():
            raise ValueError("a mutation needs at least one of remove_systems, add_systems, "
                             "remove_patches, add_patches, flip_status")
        return m

    def changes(self) -> list[tuple[str, SystemsChange | PatchChurn | StatusFlip]]:
        """``(name, part)`` of the parts present, in the order ``apply_mutation`` applies them."""
        parts = (("remove_systems", self.remove_systems), ("add_systems", self.add_systems),
                 ("remove_patches", self.remove_patches), ("add_patches", self.add_patches),
                 ("flip_status", self.flip_status))
        return [(name, part) for name, part in parts if part is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, accepted back by ``parse``."""
        d: dict[str, Any] = {}
        if self.after_page_requests is not None:
            d["after_page_requests"] = self.after_page_requests
        if self.customer is not None:
            d["customer"] = self.customer
        d.update({name: part.to_dict() for name, part in self.changes()})
        return d


_Part = TypeVar("_Part")


def _opt(d: dict[str, Any], name: str, parse: Callable[[Any], _Part]) -> _Part | None:
    return None if d.get(name) is None else parse(d[name])
