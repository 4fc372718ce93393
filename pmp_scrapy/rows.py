"""Turns systems as DCAPI sends them into mapping rows (no HTTP, no SQL).

The spider calls :func:`page_rows` as soon as a page is parsed, so a page's JSON lives only
for the moment it takes to read it; from then on only the compact rows travel (spec NFR-1).
Every value passes :mod:`pmp_scrapy.values_guard` on its way into a row: texts are made storable
(and the repairs counted in :attr:`PageRows.repaired`), ids that are not finite scalars skip
their patch or system with a warning, and a value that cannot be read at all makes the page an
``invalid_payload`` gap naming the field."""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pmp_scrapy.envelope import PayloadError
from pmp_scrapy.values_guard import id_text, one_line, storable_text

logger = logging.getLogger(__name__)

#: The fields of a ``patch_system_mapping`` row after its key, as the server names them.
MAPPING_FIELDS: tuple[str, ...] = ("patchname", "severity", "patch_status", "bulletinid", "vendor_name",
                                   "installed_time")
#: The order of values in a :data:`MappingRow`.
MAPPING_ROW_FIELDS: tuple[str, ...] = ("resource_id", "patch_id", *MAPPING_FIELDS)


def as_text(value: Any) -> str | None:
    """What the server sends, as text (ids arrive as numbers or strings; objects and arrays as
    their JSON), not yet made storable: rows use :func:`field_text`."""
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


def field_text(value: Any, repairs: Counter[str] | None = None) -> str | None:
    """A field value as stored: :func:`as_text`, then made storable (:func:`storable_text`)."""
    if value.__class__ is not str:
        value = as_text(value)
        if value is None:
            return None
    return storable_text(value, repairs)


# One string object per distinct patch name, severity, vendor... for the whole run. Not
# sys.intern: thousands of patch names would grow the interpreter's own table for good.
_shared_strings: dict[str, str] = {}
_SHARED_LIMIT = 200_000  # a catalog far larger than any PMP's; past it, start afresh


def _share(text: str) -> str:
    """The run's one string object equal to ``text``."""
    if len(_shared_strings) >= _SHARED_LIMIT:
        _shared_strings.clear()
    return _shared_strings.setdefault(text, text)


def _shared_text(value: Any, repairs: Counter[str] | None = None) -> str | None:
    """:func:`field_text`, as the run's one string object for that text."""
    if value.__class__ is str:
        shared = _shared_strings.get(value)
        if shared is not None:  # every string kept here is storable already
            return shared
    text = field_text(value, repairs)
    return None if text is None else _share(text)


# How each column after the key is read: shared or plain text, decided once, not per patch.
_COLUMNS = tuple((column, _shared_text if column in _SHARED else field_text) for column in MAPPING_FIELDS)


class ReleasedRows:
    """Where a page's rows were once a batch holds them packed: only their count is left (what
    is counted after the pipeline, e.g. the progress bar, still reads ``len``)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ReleasedRows({self.count})"


@dataclass
class PageRows:
    """The rows of one page, what was skipped and how many values were repaired, by kind
    (:data:`pmp_scrapy.values_guard.REPAIR_KINDS`)."""

    mappings: list[MappingRow] | ReleasedRows = field(default_factory=list)
    systems: list[dict[str, Any]] = field(default_factory=list)
    skipped_patches: int = 0
    skipped_systems: int = 0
    duplicate_patches: int = 0
    empty_systems: int = 0
    repaired: Counter[str] = field(default_factory=Counter)
    #: the page's first systems with their rows, packed (:func:`pack_part`) in parts of whole
    #: systems while the page was read (``page_rows(part_rows=...)``); ``mappings`` and
    #: ``systems`` hold the rest
    parts: list[bytes] = field(default_factory=list)
    part_mappings: int = 0
    part_systems: int = 0

    @property
    def mapping_count(self) -> int:
        """The page's mapping rows, packed or not."""
        return self.part_mappings + len(self.mappings)

    @property
    def system_count(self) -> int:
        """The page's systems with an id, packed or not."""
        return self.part_systems + len(self.systems)

    def release(self) -> None:
        """Drop the rows, packed or not, keeping their count: the batch has them packed, and a
        page far above the usual size must not stay in memory twice while its batch commits."""
        self.mappings, self.parts, self.part_mappings = ReleasedRows(self.mapping_count), [], 0

    def __repr__(self) -> str:
        # Short on purpose: a page item is logged whole wherever Scrapy logs an item (an error in
        # the pipeline), and a page's rows run to hundreds of kilobytes.
        return (f"PageRows({self.system_count} systems, {self.mapping_count} mappings, "
                f"{self.skipped_systems + self.skipped_patches} skipped)")


def pack_part(rows: list[MappingRow], systems: list[dict[str, Any]]) -> bytes:
    """Rows and systems as a batch keeps them (a quarter of their size live)."""
    return pickle.dumps((rows, systems), protocol=pickle.HIGHEST_PROTOCOL)


def unpack_part(packed: bytes) -> tuple[list[MappingRow], list[dict[str, Any]]]:
    """What :func:`pack_part` packed."""
    return pickle.loads(packed)  # type: ignore[no-any-return]  # our own bytes, never the server's


def page_rows(systems: Iterable[dict[str, Any]], page: int, *, part_rows: int | None = None,
              total_records: int | None = None) -> PageRows:
    """Normalise a page's systems; warn about what cannot be stored.

    Systems are marked with ``total_records`` when it is given (the state of the tenant they
    were seen in). With ``part_rows`` (a page far above the usual size), every time the rows
    reach that many at the end of a system, they and their systems are packed into
    :attr:`PageRows.parts`, so the live rows of the page never exceed about one part. A system
    met again after its part was packed (the page lists it twice: its rows are united at
    commit) unpacks the parts and the page is kept whole from then on.

    Raises :class:`~pmp_scrapy.envelope.PayloadError` (``invalid_payload``) naming the field when
    a value cannot be read at all: the page is then a gap, never partly stored."""
    result = PageRows()
    mappings: list[MappingRow] = []
    result.mappings = mappings
    packed_ids: set[str] = set()
    for index, system in enumerate(systems):
        try:
            _add_system(result, mappings, system, page)
        except Exception as exc:  # noqa: BLE001 - anything a hostile value provokes, named by its field
            where = _locate(system)
            raise PayloadError("invalid_payload", one_line(
                f"systemreport[{index}]{where} could not be read: {type(exc).__name__} ({exc})")) from None
        if part_rows is None:
            continue
        if packed_ids and result.systems and result.systems[-1]["resource_id"] in packed_ids:
            _unpack_parts(result, mappings)
            part_rows = None
        elif len(mappings) >= part_rows:
            for listed in result.systems:
                listed["total_records"] = total_records
            packed_ids.update(listed["resource_id"] for listed in result.systems)
            result.parts.append(pack_part(mappings, result.systems))
            result.part_mappings += len(mappings)
            result.part_systems += len(result.systems)
            mappings.clear()
            result.systems = []
    if total_records is not None:
        for listed in result.systems:
            listed["total_records"] = total_records
    return result


def _unpack_parts(result: PageRows, mappings: list[MappingRow]) -> None:
    """Put the packed parts of ``result`` back before its live rows and systems, in page order."""
    rows: list[MappingRow] = []
    systems: list[dict[str, Any]] = []
    for packed in result.parts:
        part_rows, part_systems = unpack_part(packed)
        rows.extend(part_rows)
        systems.extend(part_systems)
    mappings[:0] = rows
    result.systems[:0] = systems
    result.parts, result.part_mappings, result.part_systems = [], 0, 0


def _add_system(result: PageRows, mappings: list[MappingRow], system: dict[str, Any], page: int) -> None:
    """One system's rows (or its skip) into ``result``."""
    repairs = result.repaired
    resource_id, why = id_text(system.get("resource_id"), repairs)
    name = field_text(system.get("resource_name"), repairs)
    if resource_id is None:
        result.skipped_systems += 1
        logger.warning("page %d: a system whose resource_id is %s (%r) was skipped", page, why, name,
                       extra={"event_type": "system_skipped", "page": page})
        return
    patches = system.get("patches")
    if not isinstance(patches, list):
        patches = []
    by_patch: dict[str, MappingRow] = {}
    for patch in patches:
        patch_id, why = id_text(patch.get("patch_id"), repairs) if isinstance(patch, dict) else (None, "missing")
        if patch_id is None:
            result.skipped_patches += 1
            logger.warning("page %d: system %s (%s) has a patch whose patch_id is %s; skipped", page,
                           resource_id, name, why, extra={"event_type": "patch_skipped", "page": page,
                                                         "resource_id": resource_id})
            continue
        if patch_id in by_patch:
            result.duplicate_patches += 1
        # The same patch, severity and vendor recur on thousands of systems: one string
        # each keeps a buffered batch small (spec NFR-1, peak RSS).
        by_patch[patch_id] = (resource_id, _share(patch_id),
                              *(convert(patch.get(column), repairs) for column, convert in _COLUMNS))
    if not by_patch:
        result.empty_systems += 1
        logger.warning("page %d: system %s (%s) has no patch records", page, resource_id, name,
                       extra={"event_type": "system_without_patches", "page": page,
                              "resource_id": resource_id})
    mappings.extend(by_patch.values())
    result.systems.append({"resource_id": resource_id, "resource_name": name,
                           "patch_count": len(by_patch), "last_seen_page": page})


def _locate(system: Any) -> str:
    """The path (``.patches[3].patchname``) of the first value of ``system`` that cannot be
    read, found by reading each on its own; "" when none fails alone."""
    if not isinstance(system, dict):
        return ""
    checks: list[tuple[str, Any, Any]] = [(".resource_id", id_text, system.get("resource_id")),
                                          (".resource_name", field_text, system.get("resource_name"))]
    patches = system.get("patches")
    for k, patch in enumerate(patches if isinstance(patches, list) else []):
        if isinstance(patch, dict):
            checks.append((f".patches[{k}].patch_id", id_text, patch.get("patch_id")))
            checks.extend((f".patches[{k}].{column}", field_text, patch.get(column)) for column in MAPPING_FIELDS)
    for path, read, value in checks:
        try:
            read(value, Counter())
        except Exception:  # noqa: BLE001 - the first value that fails is the answer
            return path
    return ""
