"""One answer of the patch catalog, ``/dcapi/threats/patches``: read tolerantly, made storable.
Pure: no HTTP, no SQL. The sweep that asks for the pages is :mod:`pmp_scrapy.catalog`, which
re-exports every public name here.

- :func:`unavailable_reason` says whether an answer means "this server has no catalog".
- :func:`parse_catalog` reads a body into a :class:`CatalogEnvelope`, or raises
  :class:`~pmp_scrapy.envelope.PayloadError` (the page becomes a gap) or
  :class:`EndpointUnsupported` (the server has no catalog: ``error_code`` 10022). The JSON is
  loaded as the system report's is (too deep, too long a number: ``invalid_payload``), and the
  metadata counts it gives must be whole counts under the same sane maxima
  (:data:`~pmp_scrapy.envelope.MAX_TOTAL_PAGES`, :data:`~pmp_scrapy.envelope.MAX_TOTAL_RECORDS`).
- :func:`catalog_rows` turns the entries into :data:`CatalogRow` tuples and (patch, CVE) pairs.
  Field spellings vary across builds: ``patch_name`` or ``patchname``, CVE ids as a list or a
  comma/space-separated string, flags as booleans, 0/1 or "true"/"false"; a missing field is
  ``None``, and so is a count that is not a whole number from 0 to ``MAX_TOTAL_RECORDS``.
  Every text passes :mod:`pmp_scrapy.values_guard` as a mapping's does (lone surrogates and NUL
  replaced, long texts cut, each repair counted in :attr:`CatalogRows.repaired`; CVE ids are
  cut at :data:`KEY_CHARS`); an entry whose patch id is no id (missing, empty, NaN, a boolean,
  an object, longer than :data:`KEY_CHARS`...) is skipped and counted; a value that cannot be
  read at all makes the page an ``invalid_payload`` gap naming the field.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pmp_scrapy.envelope import MAX_TOTAL_PAGES, MAX_TOTAL_RECORDS, PayloadError
from pmp_scrapy.envelope import _count as bounded_count
from pmp_scrapy.envelope import _load as load_json
from pmp_scrapy.rows import as_text, field_text
from pmp_scrapy.values_guard import describe_value, id_text, one_line, storable_text

logger = logging.getLogger(__name__)

UNSUPPORTED_ERROR_CODE = "10022"
_UNAVAILABLE_BODY_MAX = 65_536  # a "not supported" answer is a few hundred bytes
#: Characters of a patch id or a CVE id, the catalog's keys. PostgreSQL's btree index holds at
#: most 2,704 bytes a row: (customer, patch_id, cve_id) at 4 bytes a character stays well inside.
KEY_CHARS = 200

#: The columns of a ``dcapi_patch_catalog`` row after ``customer``, in :data:`CatalogRow` order.
CATALOG_ROW_FIELDS: tuple[str, ...] = (
    "patch_id", "patch_name", "bulletinid", "severity", "vendor_name", "kb_number", "reboot_required",
    "released_time", "installed_system_count", "missing_system_count",
)
#: One catalog row, values in :data:`CATALOG_ROW_FIELDS` order.
CatalogRow = tuple[Any, ...]

# Wire names per column, the documented one first; later builds and older ones differ.
_ALIASES: dict[str, tuple[str, ...]] = {
    "patch_id": ("patch_id", "patchid", "patchId"),
    "patch_name": ("patch_name", "patchname", "patchName"),
    "bulletinid": ("bulletinid", "bulletin_id", "bulletinId"),
    "severity": ("severity",),
    "vendor_name": ("vendor_name", "vendorname", "vendorName"),
    "kb_number": ("kb_number", "kbnumber", "kb_num", "kbNumber"),
    "reboot_required": ("reboot_required", "rebootrequired", "isrebootrequired", "rebootRequired"),
    "released_time": ("patch_released_time", "released_time", "releasedtime", "release_time"),
    "installed_system_count": ("installed_system_count", "installedsystemcount", "installed_count"),
    "missing_system_count": ("missing_system_count", "missingsystemcount", "missing_count"),
    "cveids": ("cveids", "cve_ids", "cveid", "cves", "cveIds"),
}
_TEXT_COLUMNS = ("patch_name", "bulletinid", "severity", "vendor_name", "kb_number")
_CVE_SEPARATORS = re.compile(r"[\s,;]+")
_COUNT_TEXT = re.compile(r"\s*\+?\d{1,12}\s*")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})


class EndpointUnsupported(Exception):
    """The server answered that it has no catalog (HTTP 200, ``error_code`` 10022)."""


@dataclass
class CatalogEnvelope:
    """What the extractor uses of one catalog answer. ``total_pages`` is None when the server
    gave neither ``totalPages`` nor ``totalRecords``."""

    page: int | None
    total_pages: int | None
    total_records: int | None
    entries: list[Any]


# --- is there a catalog at all? -----------------------------------------------------------------------------

def unavailable_reason(status: int, body: bytes | None) -> str | None:
    """Why an answer means "this server has no catalog", or None: HTTP 404, or HTTP 200 with
    ``{"error_code": "10022", "error_description": "API Endpoint is not supported ..."}``. The
    reason is one storable line; a body that cannot be read is not such an answer."""
    if status == 404:
        return "HTTP 404"
    if status != 200 or not body or len(body) > _UNAVAILABLE_BODY_MAX or body.lstrip()[:1] != b"{":
        return None
    try:
        data = load_json(body)
    except PayloadError:
        return None
    return _unsupported(data)


def _scalar_text(value: Any) -> str:
    """A code or description as one short storable line; "" for null, a word for an object."""
    return one_line(value or "", limit=200) if value is None or isinstance(value, str) else describe_value(value)


def _unsupported(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    code = data.get("error_code")
    code_text = as_text(code) if isinstance(code, (str, int, float)) else None
    description = data.get("error_description")
    description = description if isinstance(description, str) else ""
    if code_text == UNSUPPORTED_ERROR_CODE or "not supported" in description[:1000].lower():
        shown = _scalar_text(description) or "API Endpoint is not supported"
        return one_line(f"error {_scalar_text(code) or '?'}: {shown}")
    return None


# --- one answer's envelope ----------------------------------------------------------------------------------

def _metadata_count(metadata: dict[str, Any], key: str, maximum: int) -> int | None:
    """``metadata[key]`` checked as the system report's counts are; None when not given."""
    return None if metadata.get(key) is None else bounded_count(metadata, key, maximum)


def parse_catalog(body: bytes, page_limit: int | None = None) -> CatalogEnvelope:
    """Read a catalog body (JSON even when labelled text/plain); see the module docstring.

    ``page_limit`` is the limit asked for, used when the metadata gives ``totalRecords`` but not
    ``totalPages`` (or a ``pageLimit`` of 0)."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise PayloadError("invalid_payload", f"top level is a JSON {type(data).__name__}, not an object")
    reason = _unsupported(data)
    if reason is not None:
        raise EndpointUnsupported(reason)
    if "error_code" in data and "message_response" not in data:
        description = _scalar_text(data.get("error_description")) or "no description"
        raise PayloadError("invalid_payload", one_line(f"error {_scalar_text(data.get('error_code'))}: {description}"))
    code = data.get("response_code")
    if code is not None and not (isinstance(code, (int, str)) and str(code) == "200"):
        raise PayloadError("invalid_payload", f"response_code is {describe_value(code)}")
    response = data.get("message_response")
    if not isinstance(response, dict):
        raise PayloadError("invalid_payload", "no message_response object in the envelope")
    entries = response.get("patches")
    if entries is None:  # another build's name for the list: accept the only list there is
        lists = [value for value in response.values() if isinstance(value, list)]
        entries = lists[0] if len(lists) == 1 else None
    if not isinstance(entries, list):
        raise PayloadError("invalid_payload",
                           f"message_response.patches is {type(entries).__name__}, not a list")
    metadata = data.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    total_records = _metadata_count(metadata, "totalRecords", MAX_TOTAL_RECORDS)
    total_pages = _metadata_count(metadata, "totalPages", MAX_TOTAL_PAGES)
    limit = _metadata_count(metadata, "pageLimit", MAX_TOTAL_RECORDS) or page_limit
    if total_pages is None and total_records is not None and limit:
        total_pages = -(-total_records // limit)
    return CatalogEnvelope(_metadata_count(metadata, "page", MAX_TOTAL_PAGES), total_pages, total_records, entries)


# --- entries into rows ----------------------------------------------------------------------------------------

def _field(entry: dict[str, Any], column: str) -> Any:
    for name in _ALIASES[column]:
        value = entry.get(name)
        if value is not None:
            return value
    return None


def system_count(value: Any) -> int | None:
    """A whole count from 0 to ``MAX_TOTAL_RECORDS`` (a number, or its digits as text), else None:
    the Integer columns hold it on every database."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, str):
        value = int(value) if _COUNT_TEXT.fullmatch(value) else None
    return value if isinstance(value, int) and 0 <= value <= MAX_TOTAL_RECORDS else None


def reboot_flag(value: Any) -> int | None:
    """1, 0 or None from a boolean, 0/1 or "true"/"false" (anything else: None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    return None


def cve_ids(value: Any, repairs: Counter[str] | None = None) -> list[str]:
    """CVE ids from a list or a comma/space-separated string: trimmed, upper-cased, made storable
    and cut at :data:`KEY_CHARS` (repairs counted in ``repairs``), deduplicated (first occurrence
    kept), empty ones ignored."""
    if value is None:
        return []
    items: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
    seen: dict[str, None] = {}
    for item in items:
        text = as_text(item) if not isinstance(item, str) else item
        if not text:
            continue
        for part in _CVE_SEPARATORS.split(text):
            part = part.strip().upper()
            if part:
                seen.setdefault(storable_text(part, repairs, limit=KEY_CHARS), None)
    return list(seen)


@dataclass
class CatalogRows:
    """The rows of one catalog page, what was skipped and how many values were repaired, by kind
    (:data:`pmp_scrapy.values_guard.REPAIR_KINDS`)."""

    patches: list[CatalogRow] = field(default_factory=list)
    cves: list[tuple[str, str]] = field(default_factory=list)  # (patch_id, cve_id)
    entries: int = 0  # entries the page listed, skipped ones included
    skipped: int = 0  # entries without a patch id (or not objects)
    duplicates: int = 0  # a patch id listed twice on the page: the later entry wins
    repaired: Counter[str] = field(default_factory=Counter)

    def __repr__(self) -> str:
        # Short on purpose: a catalog item is logged whole wherever Scrapy logs an item.
        return f"CatalogRows({len(self.patches)} patches, {len(self.cves)} CVE ids, {self.skipped} skipped)"


def _row(entry: dict[str, Any], patch_id: str, repairs: Counter[str]) -> CatalogRow:
    name, bulletin, severity, vendor, kb = (field_text(_field(entry, column), repairs) for column in _TEXT_COLUMNS)
    return (patch_id, name, bulletin, severity, vendor, kb, reboot_flag(_field(entry, "reboot_required")),
            field_text(_field(entry, "released_time"), repairs), system_count(_field(entry, "installed_system_count")),
            system_count(_field(entry, "missing_system_count")))


def _patch_id(entry: Any, repairs: Counter[str]) -> str | None:
    patch_id = id_text(_field(entry, "patch_id"), repairs)[0] if isinstance(entry, dict) else None
    return (patch_id.strip() or None) if patch_id is not None and len(patch_id) <= KEY_CHARS else None


def catalog_rows(entries: list[Any], page: int) -> CatalogRows:
    """Normalise one page's entries; one WARNING for the entries that cannot be stored.

    Raises :class:`~pmp_scrapy.envelope.PayloadError` (``invalid_payload``) naming the field when
    a value cannot be read at all: the page is then a gap, never partly stored."""
    result = CatalogRows(entries=len(entries))
    rows: dict[str, CatalogRow] = {}
    cves: dict[str, list[str]] = {}
    for index, entry in enumerate(entries):
        try:
            patch_id = _patch_id(entry, result.repaired)
            if patch_id is None:
                result.skipped += 1
                continue
            if patch_id in rows:
                result.duplicates += 1
            rows[patch_id] = _row(entry, patch_id, result.repaired)
            cves[patch_id] = cve_ids(_field(entry, "cveids"), result.repaired)
        except Exception as exc:  # noqa: BLE001 - anything a hostile value provokes, named by its field
            raise PayloadError("invalid_payload", one_line(
                f"patches[{index}]{_locate(entry)} could not be read: {type(exc).__name__} ({exc})")) from None
    if result.skipped:
        logger.warning("catalog page %d: %d patch(es) without a usable patch_id were skipped", page, result.skipped,
                       extra={"event_type": "catalog_patch_skipped", "page": page, "skipped": result.skipped})
    result.patches = sorted(rows.values(), key=lambda row: row[0])
    result.cves = [(patch_id, cve) for patch_id in sorted(cves) for cve in cves[patch_id]]
    return result


def _locate(entry: Any) -> str:
    """The path (``.patch_name``) of the first value of ``entry`` that cannot be read, found by
    reading each on its own; "" when none fails alone."""
    if not isinstance(entry, dict):
        return ""
    checks: list[tuple[str, Any]] = [("patch_id", lambda v: id_text(v, Counter()))]
    checks += [(column, lambda v: field_text(v, Counter())) for column in (*_TEXT_COLUMNS, "released_time")]
    checks += [("cveids", lambda v: cve_ids(v, Counter()))]
    for column, read in checks:
        try:
            read(_field(entry, column))
        except Exception:  # noqa: BLE001 - the first value that fails is the answer
            return f".{column}"
    return ""
