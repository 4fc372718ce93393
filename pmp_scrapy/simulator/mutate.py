"""Applying a ``Mutation`` to a customer's ``Dataset``: the one place tenant changes happen."""

from __future__ import annotations

import random

from .changes import PerSystemEdits, ShareFlip, SystemEdit, choose_additions, choose_flips, choose_removals
from .data import Dataset
from .mutations import Mutation, PatchChurn, StatusFlip, SystemsChange


def apply_mutation(ds: Dataset, mutation: Mutation) -> None:
    """Apply every part of ``mutation`` to ``ds``, in order, each part seeing the result of
    the previous one; writes ``ds``'s estate. Deterministic: the choices of a part come from
    ``random.Random(f"{seed}:{customer}:change:{version}")``. The caller serialises writers.
    Raises ValueError (a resource id that is not present, no room at the front)."""
    for _name, part in mutation.changes():
        rng = random.Random(f"{ds.seed}:{ds.customer}:change:{ds.version}")
        if isinstance(part, SystemsChange):
            _systems(ds, part, removal=_name == "remove_systems")
        elif isinstance(part, PatchChurn):
            _patches(ds, part, removal=_name == "remove_patches", rng=rng)
        elif isinstance(part, StatusFlip):
            _flip(ds, part, rng)


def _systems(ds: Dataset, change: SystemsChange, removal: bool) -> None:
    if not removal:
        ds.add_systems(change.count, change.where)
    elif change.resource_ids:
        ds.remove_resource_ids(change.resource_ids)
    else:
        ds.remove_systems(change.count, change.where)


def _patches(ds: Dataset, churn: PatchChurn, removal: bool, rng: random.Random) -> None:
    est = ds.estate
    keys = ds.dcapi_indices(est)

    def patches_of(key: int) -> list[dict[str, object]]:
        return ds.patches_of(key, est)

    if removal:
        edits = choose_removals(keys, patches_of, churn.systems, churn.per_system, rng)
    else:
        edits = choose_additions(keys, patches_of, churn.systems, churn.per_system, ds.seed, rng)
    change = PerSystemEdits(edits)
    after = est.with_change(change)
    emptied = [k for k in edits if not ds.patches_of(k, after)]
    ds.replace(est.with_change(change, emptied))


def _flip(ds: Dataset, flip: StatusFlip, rng: random.Random) -> None:
    est = ds.estate
    if flip.share is not None:
        salt = f"{ds.seed}:{ds.customer}:flip:{est.version}"
        ds.replace(est.with_change(ShareFlip(flip.share, flip.direction, salt)))
        return
    keys = ds.dcapi_indices(est)

    def patches_of(key: int) -> list[dict[str, object]]:
        return ds.patches_of(key, est)

    count = flip.count or 0
    installs = choose_flips(keys, patches_of, count, "Installed", rng) if flip.direction != "to_missing" else {}
    removals = choose_flips(keys, patches_of, count, "Missing", rng) if flip.direction != "to_installed" else {}
    edits = {key: SystemEdit(installed=installs[key].installed if key in installs else {},
                             missing=removals[key].missing if key in removals else frozenset())
             for key in {*installs, *removals}}
    ds.replace(est.with_change(PerSystemEdits(edits)))
