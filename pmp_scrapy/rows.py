"""Turns systems as DCAPI sends them into mapping rows (no HTTP, no SQL).

The spider calls :func:`page_rows` as soon as a page is parsed, so a page's JSON lives only
for the moment it takes to read it; from then on only the compact rows travel (spec NFR-1)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: The fields of a ``patch_system_mapping`` row after its key, as the server names them.
MAPPING_FIELDS: tuple[str, ...] = ("patchname", "severity", "patch_status", "bulletinid", "vendor_name",
                                   "installed_time")
#: The order of values in a :data:`MappingRow`.
MAPPING_ROW_FIELDS: tuple[str, ...] = ("resource_id", "patch_id", *MAPPING_FIELDS)


def as_text(value: Any) -> str | None:
    """Store what the server sends, as text: ids arrive as numbers or strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


#: One ``patch_system_mapping`` row, values in :data:`MAPPING_ROW_FIELDS` order. A tuple,
#: not a dict: pages waiting for the database hold thousands, and a tuple is a third the size.
MappingRow = tuple[str | None, ...]

_SHARED = frozenset({"patchname", "severity", "patch_status", "bulletinid", "vendor_name"})


# One string object per distinct patch name, severity, vendor... for the whole run. Not
# sys.intern: thousands of patch names would grow the interpreter's own table for good.
_shared_strings: dict[str, str] = {}
_SHARED_LIMIT = 200_000  # a catalog far larger than any PMP's; past it, start afresh


def _shared_text(value: Any) -> str | None:
    text = as_text(value)
    if text is None:
        return None
    if len(_shared_strings) >= _SHARED_LIMIT:
        _shared_strings.clear()
    return _shared_strings.setdefault(text, text)


# How each column after the key is read: shared or plain text, decided once, not per patch.
_COLUMNS = tuple((column, _shared_text if column in _SHARED else as_text) for column in MAPPING_FIELDS)


@dataclass
class PageRows:
    """The rows of one page and what was skipped."""

    mappings: list[MappingRow] = field(default_factory=list)
    systems: list[dict[str, Any]] = field(default_factory=list)
    skipped_patches: int = 0
    skipped_systems: int = 0
    duplicate_patches: int = 0
    empty_systems: int = 0


def page_rows(systems: list[dict[str, Any]], page: int) -> PageRows:
    """Normalise a page's systems; warn about what cannot be stored."""
    result = PageRows()
    for system in systems:
        resource_id = as_text(system.get("resource_id"))
        name = as_text(system.get("resource_name"))
        if not resource_id:
            result.skipped_systems += 1
            logger.warning("page %d: a system without resource_id (%r) was skipped", page, name,
                           extra={"event_type": "system_skipped", "page": page})
            continue
        patches = system.get("patches")
        if not isinstance(patches, list):
            patches = []
        by_patch: dict[str, MappingRow] = {}
        for patch in patches:
            patch_id = as_text(patch.get("patch_id")) if isinstance(patch, dict) else None
            if not patch_id:
                result.skipped_patches += 1
                logger.warning("page %d: system %s (%s) has a patch without patch_id; skipped", page,
                               resource_id, name, extra={"event_type": "patch_skipped", "page": page,
                                                         "resource_id": resource_id})
                continue
            if patch_id in by_patch:
                result.duplicate_patches += 1
            # The same patch, severity and vendor recur on thousands of systems: one string
            # each keeps a buffered batch small (spec NFR-1, peak RSS).
            by_patch[patch_id] = (resource_id, _shared_text(patch_id),
                                  *(convert(patch.get(column)) for column, convert in _COLUMNS))
        if not by_patch:
            result.empty_systems += 1
            logger.warning("page %d: system %s (%s) has no patch records", page, resource_id, name,
                           extra={"event_type": "system_without_patches", "page": page,
                                  "resource_id": resource_id})
        result.mappings.extend(by_patch.values())
        result.systems.append({"resource_id": resource_id, "resource_name": name,
                               "patch_count": len(by_patch), "last_seen_page": page})
    return result
