"""The "All Applicable Patches" catalog (``/dcapi/threats/patches``) of one estate version.

A patch is applicable when at least one current DCAPI system carries it; its installed and
missing counts are exact counts of distinct systems (first entry of a patch id per system,
as mappings count). The per-patch facts DCAPI's system report does not carry (CVEs, KB,
reboot, release time) and how a build spells them are deterministic per (seed, patch).
Building reads every system once, so it is cached per estate version.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .catalogue import INSTALLED_FROM_MS, CatalogPatch, catalogue, catalogue_positions
from .changes import first_statuses
from .data import Dataset
from .estate import Estate

_CVE_COUNTS = ((0, 0.2), (1, 0.65), (2, 0.9), (3, 1.0))
_KB = re.compile(r"kb(\d{6,8})", re.IGNORECASE)
_YEAR_MS = 365 * 86_400_000
PATCHNAME_SHARE = 0.07  # entries spelling the name field "patchname", as some builds do


@dataclass(frozen=True)
class PatchFacts:
    """What the catalog says of a patch beyond the system report, and how it is spelt."""

    cves: tuple[str, ...]
    cves_as_list: bool
    cve_separator: str
    kb_number: str | None
    reboot_required: bool
    reboot_as_int: bool
    released_ms: int
    name_field: str
    id_as_text: bool


def _facts(seed: int, patch: CatalogPatch) -> PatchFacts:
    rng = random.Random(f"{seed}:facts:{patch.patch_id}")
    r = rng.random()
    count = next(n for n, cumulative in _CVE_COUNTS if r < cumulative)
    cves: list[str] = []
    if patch.bulletinid and patch.bulletinid.startswith("CVE-"):  # a CVE bulletin is a CVE id
        cves.append(patch.bulletinid)
        count = max(count, 1)
    while len(cves) < count:  # a small pool, so that patches share CVEs as real ones do
        cve = f"CVE-{rng.randint(2019, 2025)}-{rng.randint(20000, 20599)}"
        if cve not in cves:
            cves.append(cve)
    kb = _KB.search(patch.patchname) if patch.vendor_name == "Microsoft" else None
    os_update = patch.patchname.startswith("Windows")
    return PatchFacts(
        cves=tuple(cves), cves_as_list=rng.random() < 0.5, cve_separator=rng.choice((",", ", ")),
        kb_number=f"KB{kb.group(1)}" if kb else None,
        reboot_required=rng.random() < (0.85 if os_update else 0.25), reboot_as_int=rng.random() < 0.4,
        released_ms=INSTALLED_FROM_MS - rng.randrange(_YEAR_MS),
        name_field="patchname" if rng.random() < PATCHNAME_SHARE else "patch_name",
        id_as_text=rng.random() < 0.3)


@lru_cache(maxsize=8)
def patch_facts(seed: int) -> dict[int, PatchFacts]:
    """``patch_id -> PatchFacts`` for every patch of ``catalogue(seed)``."""
    return {p.patch_id: _facts(seed, p) for p in catalogue(seed)}


def _ensure_a_shared_cve(cves: dict[str, list[str]]) -> None:
    """Make at least one CVE carried by two applicable patches (a tiny tenant may have none
    by chance): the first CVE of the first patch that has one goes to the next patch too."""
    if len(cves) < 2 or any(n > 1 for n in Counter(c for v in cves.values() for c in v).values()):
        return
    ids = list(cves)
    donor = next((k for k, pid in enumerate(ids) if cves[pid]), None)
    if donor is None:
        cves[ids[0]] = ["CVE-2024-21412"]
        donor = 0
    receiver = cves[ids[(donor + 1) % len(ids)]]
    receiver[2:] = []
    receiver.append(cves[ids[donor]][0])


def _entry(patch: CatalogPatch, facts: PatchFacts, cves: list[str], installed: int,
           missing: int) -> dict[str, Any]:
    return {
        "patch_id": str(patch.patch_id) if facts.id_as_text else patch.patch_id,
        facts.name_field: patch.patchname, "bulletinid": patch.bulletinid,
        "severity": patch.severity, "vendor_name": patch.vendor_name,
        "cveids": list(cves) if facts.cves_as_list else facts.cve_separator.join(cves),
        "kb_number": facts.kb_number,
        "reboot_required": int(facts.reboot_required) if facts.reboot_as_int else facts.reboot_required,
        "patch_released_time": facts.released_ms,
        "installed_system_count": installed, "missing_system_count": missing,
    }


@dataclass(frozen=True)
class ApplicablePatches:
    """The catalog of one estate version: wire-shaped ``entries`` sorted by patch id, and the
    CVE ids of each (patch id as text -> CVE ids)."""

    entries: tuple[dict[str, Any], ...]
    cves: Mapping[str, tuple[str, ...]]


def build_applicable(ds: Dataset, estate: Estate) -> ApplicablePatches:
    """Read every DCAPI system of ``estate`` once and describe the patches they carry."""
    installed: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    for key in ds.dcapi_indices(estate):
        for pid, status in first_statuses(ds.patches_of(key, estate)).items():
            (installed if status == "Installed" else missing)[pid] += 1
    ids = sorted(set(installed) | set(missing), key=int)
    facts = patch_facts(ds.seed)
    cves = {pid: list(facts[int(pid)].cves) for pid in ids}
    _ensure_a_shared_cve(cves)
    cat = catalogue(ds.seed)
    position = catalogue_positions(ds.seed)
    entries = tuple(_entry(cat[position[int(pid)]], facts[int(pid)], cves[pid], installed[pid],
                           missing[pid]) for pid in ids)
    return ApplicablePatches(entries, {pid: tuple(v) for pid, v in cves.items()})


class ApplicableCache:
    """``ApplicablePatches`` per (customer, estate version), built once even when several
    requests ask at the same time; keeps the last few versions."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._built: OrderedDict[tuple[str, int], ApplicablePatches] = OrderedDict()

    def get(self, ds: Dataset, estate: Estate) -> ApplicablePatches:
        """The catalog of ``ds`` at ``estate``, built on first use."""
        key = (ds.customer, estate.version)
        with self._lock:
            built = self._built.get(key)
            if built is None:
                built = self._built[key] = build_applicable(ds, estate)
                while len(self._built) > self._keep:
                    self._built.popitem(last=False)
            return built
