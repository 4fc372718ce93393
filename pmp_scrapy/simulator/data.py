"""One customer's fake estate: the current systems and what DCAPI and the inventory say of them.

Systems are generated on demand (``systems.py``) and rewritten by the estate's changes
(``changes.py``); nothing the size of the estate is kept but the list of current keys. The
key of a system is ``resource_id - 10001 - id_offset`` (see ``estate.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .catalogue import CatalogPatch, catalogue
from .estate import ID_BASE, ID_STRIDE, Estate
from .systems import generate_system, has_patch_rows

__all__ = ["CatalogPatch", "Dataset", "DatasetSpec", "catalogue", "tenant_datasets"]


@dataclass
class DatasetSpec:
    """Shape of one customer's fake estate.

    ``no_patch_share`` of the managed systems have no patch rows: DCAPI omits them but the
    managed-system inventory counts them. ``seed`` None means "use the Simulator's seed".
    """

    managed_systems: int = 3317
    no_patch_share: float = 0.03
    seed: int | None = None
    name_prefix: str | None = None


class Dataset:
    """One customer's managed systems; DCAPI shows those that have patches.

    Reads take an optional ``estate`` (default: the current one) so that one answer is built
    from one version; ``replace`` installs a new version (the Simulator serialises writers).
    """

    def __init__(self, spec: DatasetSpec, seed: int, customer: str = "", id_offset: int = 0) -> None:
        self.spec, self.seed, self.customer, self.id_offset = spec, seed, customer, id_offset
        self._estate = Estate.initial(spec.managed_systems)
        self._has_patches: dict[int, bool] = {}  # serial -> first draw of its generator
        self._dcapi: tuple[Estate, list[int]] | None = None

    @property
    def estate(self) -> Estate:
        """The current version of the estate."""
        return self._estate

    @property
    def version(self) -> int:
        """Number of changes made so far (0 as generated)."""
        return self._estate.version

    def replace(self, estate: Estate) -> None:
        """Make ``estate`` the current version."""
        self._estate = estate

    # ----- membership and order -----
    def has_patches(self, key: int, estate: Estate | None = None) -> bool:
        """Whether system ``key`` has patch rows, so appears in DCAPI."""
        est = estate or self._estate
        serial = est.serial(key)
        cached = self._has_patches.get(serial)
        if cached is None:
            cached = self._has_patches[serial] = has_patch_rows(
                self.seed, self.customer, serial, self.spec.no_patch_share)
        return cached and key not in est.emptied

    def dcapi_indices(self, estate: Estate | None = None) -> list[int]:
        """Keys of the current systems that DCAPI reports, in page order."""
        est = estate or self._estate
        cached = self._dcapi
        if cached is None or cached[0] is not est:
            cached = self._dcapi = (est, [k for k in est.managed if self.has_patches(k, est)])
        return cached[1]

    def managed_keys(self, estate: Estate | None = None) -> tuple[int, ...]:
        """Keys of every managed system (what the inventory lists), in page order."""
        return (estate or self._estate).managed

    def managed_total(self, estate: Estate | None = None) -> int:
        """Number of managed systems (what the inventory endpoint reports)."""
        return len(self.managed_keys(estate))

    def page_indices(self, page: int, limit: int, estate: Estate | None = None) -> list[int]:
        """Keys on DCAPI page ``page`` (1-based) of size ``limit``."""
        return self.dcapi_indices(estate)[(page - 1) * limit: page * limit]

    # ----- ids -----
    def resource_id(self, key: int) -> int:
        """The numeric resource id of system ``key``."""
        return ID_BASE + self.id_offset + key

    def key_of(self, resource_id: int | str) -> int:
        """The key of the system with this resource id (ValueError if not a number)."""
        return int(resource_id) - ID_BASE - self.id_offset

    def key_floor(self) -> int:
        """The lowest key a new system may get (resource ids stay positive)."""
        return 1 - ID_BASE - self.id_offset

    # ----- changes (the Simulator holds its lock around these) -----
    def add_systems(self, k: int, where: str = "end") -> None:
        """Add ``k`` new managed systems at the "front", "middle" or "end" of page order."""
        est = self._estate
        self.replace(est.with_systems_added(est.fresh_keys(where, k, self.key_floor())))

    def remove_systems(self, k: int, where: str = "front") -> None:
        """Remove ``k`` managed systems from the "front", "middle" or "end" of page order."""
        self.replace(self._estate.with_systems_removed(self._estate.keys_at(where, k)))

    def remove_resource_ids(self, resource_ids: Iterable[int | str]) -> None:
        """Remove the systems with these resource ids; ValueError if one is not present."""
        ids = list(resource_ids)
        keys = [self.key_of(r) for r in ids]
        present = set(self._estate.managed)
        absent = [r for r, k in zip(ids, keys) if k not in present]
        if absent:
            raise ValueError(f"no current system has resource id {absent[0]}")
        self.replace(self._estate.with_systems_removed(keys))

    # ----- content -----
    def system(self, key: int, estate: Estate | None = None) -> dict[str, Any]:
        """The DCAPI ``systemreport`` entry of system ``key`` (meaningful if it has patches)."""
        est = estate or self._estate
        gen = generate_system(self.seed, self.customer, est.serial(key), self.spec.name_prefix)
        patches = gen.patches
        for change in est.changes:
            patches = change.apply(key, patches)
        rid = self.resource_id(key)
        return {"resource_id": str(rid) if gen.rid_as_text else rid, "resource_name": gen.name,
                "patches": patches}

    def patches_of(self, key: int, estate: Estate | None = None) -> list[dict[str, Any]]:
        """The current patch list of system ``key``."""
        patches: list[dict[str, Any]] = self.system(key, estate)["patches"]
        return patches

    def inventory_entry(self, key: int, estate: Estate | None = None) -> dict[str, Any]:
        """The ``/api/1.4/som/computers`` entry of managed system ``key``."""
        est = estate or self._estate
        gen = generate_system(self.seed, self.customer, est.serial(key), self.spec.name_prefix,
                              with_patches=False)
        rid = self.resource_id(key)
        return {"resource_id": str(rid) if gen.rid_as_text else rid, "resource_name": gen.name,
                "computer_live_status": 1,
                "os_name": "Windows Server 2022" if gen.server else "Windows 11"}

    def systems_json(self, keys: list[int], estate: Estate | None = None) -> bytes:
        """The ``systemreport`` list of these systems, as UTF-8 JSON with raw unicode."""
        return json.dumps([self.system(k, estate) for k in keys], ensure_ascii=False).encode("utf-8")

    def mappings(self, keys: list[int], estate: Estate | None = None
                 ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(resource_id, patch_id, fields)`` of every distinct mapping of these systems."""
        for key in keys:
            system = self.system(key, estate)
            rid = str(system["resource_id"])
            seen: set[str] = set()
            for patch in system["patches"]:
                pid = str(patch["patch_id"])
                if pid not in seen:
                    seen.add(pid)
                    yield rid, pid, {k: v for k, v in patch.items() if k != "patch_id"}


def _id_span(spec: DatasetSpec) -> int:
    """Resource ids reserved for one customer: a million, or more for a very large estate
    (keys grow by ID_STRIDE per system, with room for as many again added later)."""
    need = ID_BASE + 2 * ID_STRIDE * spec.managed_systems
    return max(1_000_000, -(-need // 1_000_000) * 1_000_000)


def tenant_datasets(default: DatasetSpec, customers: dict[str, DatasetSpec], seed: int
                    ) -> dict[str | None, Dataset]:
    """The datasets of one server: None is the default (non-MSP) estate; each named customer
    gets its own seed (``spec.seed`` or ``seed``) and a disjoint resource-id range."""
    def seed_of(spec: DatasetSpec) -> int:
        return seed if spec.seed is None else spec.seed

    datasets: dict[str | None, Dataset] = {None: Dataset(default, seed_of(default))}
    offset = _id_span(default)
    for name, spec in customers.items():
        datasets[name] = Dataset(spec, seed_of(spec), name, offset)
        offset += _id_span(spec)
    return datasets
