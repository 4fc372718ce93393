"""The patch catalogue: every patch the simulated PMP knows, deterministic for a seed.

Systems draw their patches from it (``systems.py``); the applicable-patches endpoint describes
the part of it a tenant's systems carry (``applicable.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

CATALOGUE_SIZE = 3302
INSTALLED_FROM_MS = 1_672_531_200_000  # 2023-01-01T00:00:00Z
INSTALLED_TO_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z

_SEVERITIES = (("Critical", 0.30), ("Important", 0.70), ("Moderate", 0.90), ("Low", 1.0))
_VENDORS = (
    ("Microsoft", 0.60), ("Mozilla", 0.68), ("Google", 0.76), ("Adobe", 0.83),
    ("Oracle", 0.88), ("Igor Pavlov", 0.90), ("Notepad++ Team", 0.92), ("VideoLAN", 0.94),
    ("Zoom Video Communications", 0.96), ("Apple", 0.98), ("Citrix", 1.0),
)


@dataclass(frozen=True)
class CatalogPatch:
    """One patch of the catalogue, as DCAPI describes it (status and time are per system)."""

    patch_id: int
    patchname: str
    severity: str
    bulletinid: str | None
    vendor_name: str

    def on_system(self, id_as_text: bool, installed_time: str | None) -> dict[str, Any]:
        """This patch's entry in a system's DCAPI patch list: Installed at ``installed_time``
        (epoch ms as text), or Missing when it is None."""
        return {"patch_id": str(self.patch_id) if id_as_text else self.patch_id,
                "patchname": self.patchname, "severity": self.severity,
                "patch_status": "Missing" if installed_time is None else "Installed",
                "bulletinid": self.bulletinid, "vendor_name": self.vendor_name,
                "installed_time": installed_time}


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


@lru_cache(maxsize=8)
def catalogue_positions(seed: int) -> dict[int, int]:
    """``patch_id -> position`` in ``catalogue(seed)``."""
    return {p.patch_id: j for j, p in enumerate(catalogue(seed))}
