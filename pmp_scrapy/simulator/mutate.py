"""Applying a ``Mutation`` to a customer's ``Dataset``: the one place tenant changes happen."""

from __future__ import annotations

import random

from .changes import PerSystemEdits, ShareFlip, SystemEdit, choose_additions, choose_flips, choose_removals
from .data import Dataset
from .mutations import Mutation, PatchChurn, StatusFlip, SystemsChange


def apply_mutation(ds: Dataset, mutation: Mutation) -> None:
    """Apply every part of ``mutation`` to ``ds`` in the documented order (systems removed,
    added, patches removed, added, statuses flipped), each part seeing the result of the
    previous one; writes ``ds``'s estate. Deterministic: a part's choices come from
    ``random.Random(f"{seed}:{customer}:change:{version}")``. The caller serialises writers.
    Raises ValueError (a resource id that is not present, no room at the front)."""
    if mutation.remove_systems is not None:
        _remove_systems(ds, mutation.remove_systems)
    if mutation.add_systems is not None:
        ds.add_systems(mutation.add_systems.count, mutation.add_systems.where)
    if mutation.remove_patches is not None:
        _patches(ds, mutation.remove_patches, removal=True)
    if mutation.add_patches is not None:
        _patches(ds, mutation.add_patches, removal=False)
    if mutation.flip_status is not None:
        _flip(ds, mutation.flip_status)


def _rng(ds: Dataset) -> random.Random:
    return random.Random(f"{ds.seed}:{ds.customer}:change:{ds.version}")


def _remove_systems(ds: Dataset, change: SystemsChange) -> None:
    if change.resource_ids:
        ds.remove_resource_ids(change.resource_ids)
    else:
        ds.remove_systems(change.count, change.where)


def _patches(ds: Dataset, churn: PatchChurn, removal: bool) -> None:
    est, rng = ds.estate, _rng(ds)
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


def _flip(ds: Dataset, flip: StatusFlip) -> None:
    est, rng = ds.estate, _rng(ds)
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
