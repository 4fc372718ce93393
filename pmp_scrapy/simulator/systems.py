"""One managed system as first generated: name, id type and DCAPI patch list.

Every system is generated from its own ``random.Random(f"{seed}:{customer}:{serial}")``, so
any system can be produced on demand and nothing the size of the estate is kept. The order
of the draws is part of the data: changing it changes every data set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .catalogue import INSTALLED_FROM_MS, INSTALLED_TO_MS, catalogue

SERVER_SHARE = 0.035
DUPLICATE_SHARE = 0.01

_CITIES = ("Zürich", "München", "Köln", "Kraków", "Malmö", "São Paulo", "Montréal",
           "Sydney", "Melbourne", "Brisbane", "Perth", "Auckland", "東京")
_SERVER_ROLES = ("DC", "FS", "APP", "WEB", "EXCH", "PRINT", "BKP", "RDS")


@dataclass(frozen=True)
class GeneratedSystem:
    """A system as generated, before any tenant change: ``rid_as_text`` says whether its
    resource id is served as a string; ``patches`` is its DCAPI patch list (may hold one
    duplicated entry)."""

    name: str
    server: bool
    rid_as_text: bool
    patches: list[dict[str, Any]]


def system_rng(seed: int, customer: str, serial: int) -> random.Random:
    """The generator of system ``serial``; its first draw decides whether it has patches."""
    return random.Random(f"{seed}:{customer}:{serial}")


def has_patch_rows(seed: int, customer: str, serial: int, no_patch_share: float) -> bool:
    """Whether system ``serial`` has patch rows (DCAPI omits the others)."""
    return system_rng(seed, customer, serial).random() >= no_patch_share


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


def generate_system(seed: int, customer: str, serial: int, name_prefix: str | None,
                    with_patches: bool = True) -> GeneratedSystem:
    """System ``serial`` of ``customer``'s estate; ``with_patches`` False skips the (costly)
    patch list, for the inventory."""
    rng = system_rng(seed, customer, serial)
    rng.random()  # has_patch_rows draw
    server = rng.random() < SERVER_SHARE
    name = _system_name(rng, serial + 1, server)
    if name_prefix:
        name = f"{name_prefix}-{name}"
    rid_as_text = rng.random() < 0.5
    patches = _patches(rng, seed, server) if with_patches else []
    return GeneratedSystem(name, server, rid_as_text, patches)


def _patches(rng: random.Random, seed: int, server: bool) -> list[dict[str, Any]]:
    pid_as_text = rng.random() < 0.5
    installed_rate = rng.uniform(0.65, 0.95)
    cat = catalogue(seed)
    chosen = sorted(rng.sample(range(len(cat)), _patch_count(rng, server)))
    patches: list[dict[str, Any]] = []
    for j in chosen:
        installed = rng.random() < installed_rate
        when = str(rng.randrange(INSTALLED_FROM_MS, INSTALLED_TO_MS)) if installed else None
        patches.append(cat[j].on_system(pid_as_text, when))
    if rng.random() < DUPLICATE_SHARE:
        patches.insert(rng.randrange(len(patches) + 1), dict(rng.choice(patches)))
    return patches
