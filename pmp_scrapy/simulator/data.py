"""Deterministic fake PMP data: a patch catalogue and lazily generated managed systems.

Every system is generated from its own ``random.Random(f"{seed}:{customer}:{index}")`` so
any page can be produced on demand; nothing the size of the whole dataset is kept in memory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from collections.abc import Iterator

CATALOGUE_SIZE = 3302
SERVER_SHARE = 0.035
DUPLICATE_SHARE = 0.01
INSTALLED_FROM_MS = 1_672_531_200_000  # 2023-01-01T00:00:00Z
INSTALLED_TO_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z

_SEVERITIES = (("Critical", 0.30), ("Important", 0.70), ("Moderate", 0.90), ("Low", 1.0))
_VENDORS = (
    ("Microsoft", 0.60), ("Mozilla", 0.68), ("Google", 0.76), ("Adobe", 0.83),
    ("Oracle", 0.88), ("Igor Pavlov", 0.90), ("Notepad++ Team", 0.92), ("VideoLAN", 0.94),
    ("Zoom Video Communications", 0.96), ("Apple", 0.98), ("Citrix", 1.0),
)
_CITIES = ("Zürich", "München", "Köln", "Kraków", "Malmö", "São Paulo", "Montréal",
           "Sydney", "Melbourne", "Brisbane", "Perth", "Auckland", "東京")
_SERVER_ROLES = ("DC", "FS", "APP", "WEB", "EXCH", "PRINT", "BKP", "RDS")


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


@dataclass(frozen=True)
class CatalogPatch:
    """One patch of the catalogue, as DCAPI describes it (status and time are per system)."""

    patch_id: int
    patchname: str
    severity: str
    bulletinid: str | None
    vendor_name: str


def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    for value, cumulative in table:
        if r < cumulative:
            return value
    return table[-1][0]


def _third_party(rng: random.Random, vendor: str) -> tuple[str, str | None]:
    """Name and bulletin of a non-Microsoft patch; about a quarter have no bulletin."""
    n, m, year = rng.randint(0, 40), rng.randint(1, 199), rng.randint(2019, 2025)
    cve = f"CVE-{year}-{rng.randint(1000, 49999)}"
    chrome = f"{rng.randint(110, 131)}.0.{rng.randint(5000, 6999)}.{m}"
    names = {
        "Mozilla": (f"firefox-{rng.randint(100, 135)}.0.{n % 6}-x64.exe", f"MFSA{year}-{m % 60:02d}"),
        "Google": (f"googlechromestandaloneenterprise64-{chrome}.msi", cve),
        "Adobe": (f"AcroRdrDCUpd{rng.randint(2100120000, 2400599999)}.msp",
                  f"APSB{year % 100}-{m % 80:02d}"),
        "Oracle": (f"jre-8u{rng.randint(200, 431)}-windows-x64.exe", cve),
        "Igor Pavlov": (f"7z{rng.randint(19, 24)}{m % 10:02d}-x64.exe", cve),
        "Notepad++ Team": (f"npp.{7 + n % 2}.{n % 10}.{m % 10}.Installer{rng.choice(('', '.x64'))}.exe",
                           None),
        "VideoLAN": (f"vlc-{2 + n % 2}.{m % 3}.{m % 25}-win{rng.choice((32, 64))}.exe",
                     f"VideoLAN-SB-VLC-{n % 4}{m % 25:02d}"),
        "Zoom Video Communications": (f"ZoomInstallerFull-{rng.randint(5, 6)}.{n % 20}.{m}.msi",
                                      f"ZSB-{year % 100}0{m % 40:02d}"),
        "Apple": (f"iTunes64Setup-12.{n % 14}.{m % 10}.exe", cve),
        "Citrix": (f"CitrixWorkspaceApp-{rng.randint(2203, 2409)}.{m % 9}.exe",
                   f"CTX{rng.randint(200000, 699999)}"),
    }
    name, bulletin = names[vendor]
    return name, (None if rng.random() < 0.25 else bulletin)


def _microsoft(rng: random.Random) -> tuple[str, str]:
    kb = rng.randint(2500000, 5050000)
    template = rng.choice((
        "Windows10.0-KB{kb}-x64.msu", "Windows10.0-KB{kb}-x86.msu", "Windows11.0-KB{kb}-x64.msu",
        "WindowsServer2019-KB{kb}-x64.msu", "WindowsServer2022-KB{kb}-x64.msu",
        "vcredist_KB{kb}_x86.exe", "vcredist_KB{kb}_x64.exe", "office2016-kb{kb}-fullfile-x64-glb.exe",
        "SQLServer2019-KB{kb}-x64.exe", "ndp48-kb{kb}-x64.exe",
    ))
    if rng.random() < 0.35:
        bulletin = f"MS{rng.randint(10, 17)}-{rng.randint(1, 130):03d}"
    else:
        bulletin = f"CVE-{rng.randint(2018, 2025)}-{rng.randint(20000, 49999)}"
    return template.format(kb=kb), bulletin


@lru_cache(maxsize=8)
def catalogue(seed: int) -> tuple[CatalogPatch, ...]:
    """The patch catalogue for ``seed``: ``CATALOGUE_SIZE`` patches with unique ids and names."""
    rng = random.Random(f"{seed}:catalogue")
    seen: set[str] = set()
    patches: list[CatalogPatch] = []
    for j in range(CATALOGUE_SIZE):
        vendor = _pick(rng, _VENDORS)
        for tries in range(100):
            if tries == 50:  # small name spaces (few versions) can saturate: fall back
                vendor = "Microsoft"
            name, bulletin = _microsoft(rng) if vendor == "Microsoft" else _third_party(rng, vendor)
            if name not in seen:
                break
        seen.add(name)
        patch_id = 10001 + 3 * j + rng.randrange(3)
        patches.append(CatalogPatch(patch_id, name, _pick(rng, _SEVERITIES), bulletin, vendor))
    return tuple(patches)


def _system_name(rng: random.Random, number: int, server: bool) -> str:
    city = rng.choice(_CITIES).replace(" ", "")
    if server:
        style = rng.randrange(3)
        if style == 0:
            return f"SRV-{rng.choice(_SERVER_ROLES)}-{number:03d}"
        return f"SQL-{number:03d}" if style == 1 else f"SRV-{city.upper()}-{number:02d}"
    style = rng.randrange(10)
    if style < 4:
        return f"PC-{city}-{number:03d}"
    if style < 6:
        return f"{city.upper()}-LT-{number}"
    if style < 9:
        chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        return "DESKTOP-" + "".join(rng.choice(chars) for _ in range(7))
    return f"サーバー-{number:02d}"


def _patch_count(rng: random.Random, server: bool) -> int:
    if server:
        return int(rng.triangular(200, 500, 300))
    if rng.random() < 0.93:
        return int(rng.triangular(10, 75, 15))
    return int(rng.triangular(80, 200, 85))


class Dataset:
    """One customer's managed systems ``[lo, hi)``; DCAPI shows those that have patches.

    Not thread-safe: the Simulator serialises mutations and snapshots ``dcapi_indices()``.
    """

    def __init__(self, spec: DatasetSpec, seed: int, customer: str = "", id_offset: int = 0) -> None:
        self.spec, self.seed, self.customer, self.id_offset = spec, seed, customer, id_offset
        self.lo, self.hi = 0, spec.managed_systems
        self.version = 0
        self._has_patches: dict[int, bool] = {}
        self._indices: list[int] | None = None

    def _rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.customer}:{i}")

    def has_patches(self, i: int) -> bool:
        """Whether system ``i`` appears in DCAPI (first draw of its generator)."""
        cached = self._has_patches.get(i)
        if cached is None:
            cached = self._has_patches[i] = self._rng(i).random() >= self.spec.no_patch_share
        return cached

    def dcapi_indices(self) -> list[int]:
        """Indices of the current managed systems that DCAPI reports, in page order."""
        if self._indices is None:
            self._indices = [i for i in range(self.lo, self.hi) if self.has_patches(i)]
        return self._indices

    def managed_total(self) -> int:
        """Number of managed systems (what the inventory endpoint reports)."""
        return self.hi - self.lo

    def add_systems(self, k: int) -> None:
        """Append ``k`` new managed systems at the end."""
        self.hi += max(0, k)
        self._changed()

    def remove_systems(self, k: int) -> None:
        """Remove ``k`` managed systems from the front."""
        self.lo = min(self.hi, self.lo + max(0, k))
        self._changed()

    def _changed(self) -> None:
        self._indices = None
        self.version += 1

    def header(self, i: int) -> tuple[Any, str, random.Random, bool]:
        """``(resource_id as served, resource_name, rng positioned after the header, server)``."""
        rng = self._rng(i)
        rng.random()  # has_patches draw
        server = rng.random() < SERVER_SHARE
        name = _system_name(rng, i + 1, server)
        if self.spec.name_prefix:
            name = f"{self.spec.name_prefix}-{name}"
        rid = self.resource_id(i)
        return (str(rid) if rng.random() < 0.5 else rid), name, rng, server

    def inventory_entry(self, i: int) -> dict[str, Any]:
        """The ``/api/1.4/som/computers`` entry of managed system ``i``."""
        rid, name, _, _ = self.header(i)
        return {"resource_id": rid, "resource_name": name, "computer_live_status": 1,
                "os_name": "Windows Server 2022" if name.startswith(("SRV", "SQL")) else "Windows 11"}

    def system(self, i: int) -> dict[str, Any]:
        """The DCAPI ``systemreport`` entry of system ``i`` (call only if ``has_patches(i)``)."""
        rid, name, rng, server = self.header(i)
        pid_as_str = rng.random() < 0.5
        installed_rate = rng.uniform(0.65, 0.95)
        cat = catalogue(self.seed)
        chosen = sorted(rng.sample(range(len(cat)), _patch_count(rng, server)))
        patches: list[dict[str, Any]] = []
        for j in chosen:
            p = cat[j]
            installed = rng.random() < installed_rate
            when = str(rng.randrange(INSTALLED_FROM_MS, INSTALLED_TO_MS)) if installed else None
            patches.append({
                "patch_id": str(p.patch_id) if pid_as_str else p.patch_id,
                "patchname": p.patchname, "severity": p.severity,
                "patch_status": "Installed" if installed else "Missing",
                "bulletinid": p.bulletinid, "vendor_name": p.vendor_name, "installed_time": when,
            })
        if rng.random() < DUPLICATE_SHARE:
            patches.insert(rng.randrange(len(patches) + 1), dict(rng.choice(patches)))
        return {"resource_id": rid, "resource_name": name, "patches": patches}

    def page_indices(self, page: int, limit: int) -> list[int]:
        """System indices on DCAPI page ``page`` (1-based) of size ``limit``."""
        return self.dcapi_indices()[(page - 1) * limit: page * limit]

    def systems_json(self, indices: list[int]) -> bytes:
        """The ``systemreport`` list of these systems, as UTF-8 JSON with raw unicode."""
        return json.dumps([self.system(i) for i in indices], ensure_ascii=False).encode("utf-8")

    def resource_id(self, i: int) -> int:
        """The numeric resource id of system ``i``."""
        return 10001 + self.id_offset + i

    def mappings(self, indices: list[int]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(resource_id, patch_id, fields)`` of every distinct mapping of these systems."""
        for i in indices:
            system = self.system(i)
            rid = str(system["resource_id"])
            seen: set[str] = set()
            for patch in system["patches"]:
                pid = str(patch["patch_id"])
                if pid not in seen:
                    seen.add(pid)
                    yield rid, pid, {k: v for k, v in patch.items() if k != "patch_id"}
