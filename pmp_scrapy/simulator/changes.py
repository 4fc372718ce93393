"""Patch-level tenant changes: values that rewrite a system's generated patch list.

A change is applied every time a system is generated, in the order the changes were made,
so an estate keeps only what each change decided (a few entries per touched system, or one
rule for share-based flips), never the patch lists themselves. Patches are matched by their
id as text, since ``patch_id`` may be served as a number or a string.

The ``choose_*`` functions decide what a count-based change touches; they read systems
through ``patches_of(key)`` (the current patch list) and write nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .catalogue import INSTALLED_TO_MS, catalogue

Patches = list[dict[str, Any]]
PatchesOf = Callable[[int], Patches]
DIRECTIONS = ("both", "to_installed", "to_missing")
_CHANGE_WINDOW_MS = 30 * 86_400_000  # a flip to Installed is dated in the 30 days after the data


def change_time(rng: random.Random) -> str:
    """An installed_time (epoch ms as text) for a patch that became Installed."""
    return str(INSTALLED_TO_MS + rng.randrange(_CHANGE_WINDOW_MS))


def _installed(p: dict[str, Any], when: str) -> dict[str, Any]:
    return {**p, "patch_status": "Installed", "installed_time": when}


def _missing(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "patch_status": "Missing", "installed_time": None}


def _insert_in_id_order(patches: Patches, new: dict[str, Any]) -> None:
    pid = int(new["patch_id"])
    at = next((k for k, p in enumerate(patches) if int(p["patch_id"]) > pid), len(patches))
    patches.insert(at, dict(new))


@dataclass(frozen=True)
class SystemEdit:
    """What one change did to one system: patches now Installed (id -> installed_time), now
    Missing, removed, and added (entries inserted in patch-id order)."""

    installed: Mapping[str, str] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    added: tuple[dict[str, Any], ...] = ()

    def apply(self, patches: Patches) -> Patches:
        """The edited copy of ``patches`` (entries of one patch id are edited alike)."""
        out: Patches = []
        for p in patches:
            pid = str(p["patch_id"])
            if pid in self.removed:
                continue
            if pid in self.installed:
                p = _installed(p, self.installed[pid])
            elif pid in self.missing:
                p = _missing(p)
            out.append(p)
        for new in self.added:
            _insert_in_id_order(out, new)
        return out


@dataclass(frozen=True)
class PerSystemEdits:
    """A change touching a known set of systems (count-based flips, patches added/removed)."""

    edits: Mapping[int, SystemEdit]

    def apply(self, key: int, patches: Patches) -> Patches:
        """``patches`` of system ``key`` after this change."""
        edit = self.edits.get(key)
        return patches if edit is None else edit.apply(patches)


@dataclass(frozen=True)
class ShareFlip:
    """Each (system, patch) pair flips with probability ``share``: Missing -> Installed and/or
    Installed -> Missing (``direction``), decided by ``random.Random(f"{salt}:{key}")``."""

    share: float
    direction: str
    salt: str

    def apply(self, key: int, patches: Patches) -> Patches:
        """``patches`` of system ``key`` after this change."""
        rng = random.Random(f"{self.salt}:{key}")
        decided: dict[str, str | None] = {}  # patch id -> new installed_time, or None: Missing
        out: Patches = []
        for p in patches:
            pid = str(p["patch_id"])
            if pid not in decided and rng.random() < self.share:
                if p["patch_status"] == "Missing" and self.direction != "to_missing":
                    decided[pid] = change_time(rng)
                elif p["patch_status"] == "Installed" and self.direction != "to_installed":
                    decided[pid] = None
            if pid in decided:
                when = decided[pid]
                p = _missing(p) if when is None else _installed(p, when)
            out.append(p)
        return out


def first_statuses(patches: Patches) -> dict[str, str]:
    """Patch id (text) -> status of the first entry of each id (how mappings count them)."""
    statuses: dict[str, str] = {}
    for p in patches:
        statuses.setdefault(str(p["patch_id"]), p["patch_status"])
    return statuses


def choose_flips(keys: Sequence[int], patches_of: PatchesOf, count: int, to_status: str,
                 rng: random.Random) -> dict[int, SystemEdit]:
    """Edits turning ``count`` (system, patch) pairs not yet ``to_status`` into it, a few per
    system, systems taken in a shuffled order of ``keys``."""
    order = list(keys)
    rng.shuffle(order)
    edits: dict[int, SystemEdit] = {}
    for key in order:
        if count <= 0:
            break
        eligible = [pid for pid, st in first_statuses(patches_of(key)).items() if st != to_status]
        take = rng.sample(eligible, min(count, len(eligible), 1 + rng.randrange(3)))
        if take:
            count -= len(take)
            edits[key] = (SystemEdit(installed={pid: change_time(rng) for pid in take})
                          if to_status == "Installed" else SystemEdit(missing=frozenset(take)))
    return edits


def choose_removals(keys: Sequence[int], patches_of: PatchesOf, systems: int, per_system: int,
                    rng: random.Random) -> dict[int, SystemEdit]:
    """Edits removing ``per_system`` patches from each of ``systems`` systems of ``keys``."""
    edits: dict[int, SystemEdit] = {}
    for key in rng.sample(list(keys), min(systems, len(keys))):
        present = sorted(first_statuses(patches_of(key)))
        edits[key] = SystemEdit(removed=frozenset(rng.sample(present, min(per_system, len(present)))))
    return edits


def choose_additions(keys: Sequence[int], patches_of: PatchesOf, systems: int, per_system: int,
                     seed: int, rng: random.Random) -> dict[int, SystemEdit]:
    """Edits adding ``per_system`` catalogue patches, Missing, to each of ``systems`` systems of
    ``keys`` (patch ids typed like the system's own)."""
    cat = catalogue(seed)
    edits: dict[int, SystemEdit] = {}
    for key in rng.sample(list(keys), min(systems, len(keys))):
        patches = patches_of(key)
        present = set(first_statuses(patches))
        as_text = bool(patches) and isinstance(patches[0]["patch_id"], str)
        free = [p for p in cat if str(p.patch_id) not in present]
        chosen = sorted(rng.sample(free, min(per_system, len(free))), key=lambda p: p.patch_id)
        edits[key] = SystemEdit(added=tuple(p.on_system(as_text, None) for p in chosen))
    return edits
