"""The patch catalog, ``/dcapi/threats/patches`` ("All Applicable Patches"): reading its answers
tolerantly into rows, and planning one run's catalog sweep. Pure: no HTTP, no SQL.

- :func:`parse_catalog` reads a body into a :class:`CatalogEnvelope`, raises
  :class:`~pmp_scrapy.envelope.PayloadError` (the page becomes a gap) or
  :class:`EndpointUnsupported` (the server has no catalog: ``error_code`` 10022).
- :func:`catalog_rows` turns the entries into :data:`CatalogRow` tuples and (patch, CVE) pairs.
  Field spellings vary across builds: ``patch_name`` or ``patchname``, CVE ids as a list or a
  comma/space-separated string, flags as booleans, 0/1 or "true"/"false"; a missing field is
  ``None``; an entry without a patch id is skipped and counted.
- :class:`CatalogSweep` decides which catalog pages a run asks for and when its sweep is over.

Catalog gaps share the seed's gap table with the system report: catalog page *N* is stored
as ``page_num = -N`` (:func:`gap_page_num`), so the table's key ``(snapshot_id, page_num)``
stays unique and system-report pages (always >= 1) are untouched.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pmp_scrapy.envelope import PayloadError
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.rows import as_text

logger = logging.getLogger(__name__)

CATALOG_PATH = "/dcapi/threats/patches"
#: PMP's documented caps: ``page`` and ``pageLimit`` up to 1000.
MAX_CATALOG_PAGES = 1000
MAX_CATALOG_PAGE_LIMIT = 1000
UNSUPPORTED_ERROR_CODE = "10022"

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
_CVE_SEPARATORS = re.compile(r"[\s,;]+")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})


# --- conventions shared with the store and `scrapy status` -------------------------------------------

def gap_page_num(page: int) -> int:
    """The ``page_num`` a catalog page's gap is stored under: catalog page N is ``-N``."""
    return -abs(page)


def describe_gap_page(page_num: int) -> tuple[str, int]:
    """``("catalog", N)`` for a catalog gap's ``page_num`` (-N), ``("systemreport", N)`` otherwise."""
    return ("catalog", -page_num) if page_num < 0 else ("systemreport", page_num)


# --- reading one answer ---------------------------------------------------------------------------------

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


def unavailable_reason(status: int, body: bytes | None) -> str | None:
    """Why an answer means "this server has no catalog", or None: HTTP 404, or HTTP 200 with
    ``{"error_code": "10022", "error_description": "API Endpoint is not supported ..."}``."""
    if status == 404:
        return "HTTP 404"
    if status != 200 or not body or len(body) > 65_536 or body.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return _unsupported(data)


def _unsupported(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    code = as_text(data.get("error_code"))
    description = as_text(data.get("error_description")) or ""
    if code == UNSUPPORTED_ERROR_CODE or "not supported" in description.lower():
        return f"error {code or '?'}: {description or 'API Endpoint is not supported'}"
    return None


def _optional_count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def parse_catalog(body: bytes, page_limit: int | None = None) -> CatalogEnvelope:
    """Read a catalog body (JSON even when labelled text/plain); see the module docstring.

    ``page_limit`` is the limit asked for, used when the metadata gives ``totalRecords`` but not
    ``totalPages``."""
    if not body or not body.strip():
        raise PayloadError("json_parse_error", "empty response body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        what = "an HTML page" if body.lstrip()[:1] == b"<" else "malformed JSON"
        raise PayloadError("json_parse_error",
                           f"response is {what}, not JSON ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise PayloadError("invalid_payload", f"top level is a JSON {type(data).__name__}, not an object")
    reason = _unsupported(data)
    if reason is not None:
        raise EndpointUnsupported(reason)
    if "error_code" in data and "message_response" not in data:
        raise PayloadError("invalid_payload", f"error {as_text(data.get('error_code'))}: "
                                              f"{as_text(data.get('error_description')) or 'no description'}")
    code = data.get("response_code")
    if code is not None and str(code) != "200":
        raise PayloadError("invalid_payload", f"response_code is {code!r}")
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
    total_records = _optional_count(metadata.get("totalRecords"))
    total_pages = _optional_count(metadata.get("totalPages"))
    limit = _optional_count(metadata.get("pageLimit")) or page_limit
    if total_pages is None and total_records is not None and limit:
        total_pages = math.ceil(total_records / limit)
    return CatalogEnvelope(_optional_count(metadata.get("page")), total_pages, total_records, entries)


# --- entries into rows ------------------------------------------------------------------------------------

def _field(entry: dict[str, Any], column: str) -> Any:
    for name in _ALIASES[column]:
        value = entry.get(name)
        if value is not None:
            return value
    return None


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


def cve_ids(value: Any) -> list[str]:
    """CVE ids from a list or a comma/space-separated string: trimmed, upper-cased,
    deduplicated (first occurrence kept), empty ones ignored."""
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
                seen.setdefault(part, None)
    return list(seen)


@dataclass
class CatalogRows:
    """The rows of one catalog page and what was skipped."""

    patches: list[CatalogRow] = field(default_factory=list)
    cves: list[tuple[str, str]] = field(default_factory=list)  # (patch_id, cve_id)
    entries: int = 0  # entries the page listed, skipped ones included
    skipped: int = 0  # entries without a patch id (or not objects)
    duplicates: int = 0  # a patch id listed twice on the page: the later entry wins


def _row(entry: dict[str, Any], patch_id: str) -> CatalogRow:
    return (
        patch_id, as_text(_field(entry, "patch_name")), as_text(_field(entry, "bulletinid")),
        as_text(_field(entry, "severity")), as_text(_field(entry, "vendor_name")),
        as_text(_field(entry, "kb_number")), reboot_flag(_field(entry, "reboot_required")),
        as_text(_field(entry, "released_time")), _optional_count(_field(entry, "installed_system_count")),
        _optional_count(_field(entry, "missing_system_count")),
    )


def catalog_rows(entries: list[Any], page: int) -> CatalogRows:
    """Normalise one page's entries; one WARNING for the entries that cannot be stored."""
    result = CatalogRows(entries=len(entries))
    rows: dict[str, CatalogRow] = {}
    cves: dict[str, list[str]] = {}
    for entry in entries:
        patch_id = as_text(_field(entry, "patch_id")) if isinstance(entry, dict) else None
        if patch_id is not None:
            patch_id = patch_id.strip()
        if not patch_id:
            result.skipped += 1
            continue
        assert isinstance(entry, dict)
        if patch_id in rows:
            result.duplicates += 1
        rows[patch_id] = _row(entry, patch_id)
        cves[patch_id] = cve_ids(_field(entry, "cveids"))
    if result.skipped:
        logger.warning("catalog page %d: %d patch(es) without patch_id were skipped", page, result.skipped,
                       extra={"event_type": "catalog_patch_skipped", "page": page, "skipped": result.skipped})
    result.patches = sorted(rows.values(), key=lambda row: row[0])
    result.cves = [(patch_id, cve) for patch_id in sorted(cves) for cve in cves[patch_id]]
    return result


# --- one run's sweep ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepEnd:
    """How a run's catalog sweep ended, sent with its last page: the store decides the
    snapshot's ``catalog_state`` from it and the gaps still open."""

    listing_complete: bool  # every page of the listing settled (as rows or as a gap)
    total_records: int | None  # the server's latest totalRecords
    records_changed: bool  # totalRecords differed between pages: the catalog moved mid-sweep
    skipped: int  # entries skipped this run (no patch id)
    full: bool  # a sweep from page 1 (else: a retry of open catalog gaps)


class CatalogSweep:
    """Which catalog pages a run asks for, and when its sweep is over.

    ``full``: the whole catalog from page 1 (the first run of a snapshot, or a catalog never
    finished); otherwise only ``retry_pages`` (the open gaps of a partial catalog). When page 1
    fails and the page count is unknown, the next pages are tried, ``max_probes`` in all, as
    the system report does. A listing with no page count continues until a short page."""

    def __init__(self, *, full: bool, page_limit: int, retry_pages: Iterable[int] = (), max_probes: int = 3,
                 max_pages: int = MAX_CATALOG_PAGES) -> None:
        self.full = full
        self.page_limit = page_limit
        self.retry_pages = sorted({abs(p) for p in retry_pages})
        self.max_probes = max_probes
        self.max_pages = max_pages
        self.total_pages: int | None = None
        self.total_records: int | None = None
        self.records_changed = False
        self.requested: set[int] = set()
        self.settled: set[int] = set()
        self.skipped = 0
        self.stopped = False  # the server has no catalog
        self._blind_failures = 0

    def start(self) -> list[int]:
        """The pages to ask for first."""
        return self._ask([1] if self.full else self.retry_pages)

    def _ask(self, pages: Iterable[int]) -> list[int]:
        new = [p for p in pages if 1 <= p <= self.max_pages and p not in self.requested]
        self.requested.update(new)
        return new

    def answered(self, page: int, total_pages: int | None, total_records: int | None, entries: int,
                 skipped: int = 0) -> list[int]:
        """A page answered with data; returns the pages to ask for next."""
        self.settled.add(page)
        self.skipped += skipped
        if total_records is not None:
            if self.total_records is not None and total_records != self.total_records:
                self.records_changed = True
            self.total_records = total_records
        if total_pages is None:
            if entries >= self.page_limit and self.full:  # no count given: go on until a short page
                return self._ask([page + 1])
            total_pages = max(page, self.total_pages or 0)
        self.total_pages = min(total_pages, self.max_pages)
        return self._ask(range(1, self.total_pages + 1)) if self.full else []

    def failed(self, page: int) -> list[int]:
        """A page ended as a gap; returns the pages to ask for next (probes while the page
        count is unknown)."""
        self.settled.add(page)
        if self.full and self.total_pages is None:
            self._blind_failures += 1
            if self._blind_failures < self.max_probes:
                return self._ask([max(self.requested) + 1])
        return []

    def stop(self) -> None:
        """The server has no catalog: ask for nothing more."""
        self.stopped = True

    @property
    def over(self) -> bool:
        """Every page asked for has settled and nothing more will be asked."""
        return not self.stopped and bool(self.requested) and self.requested <= self.settled

    def end(self) -> SweepEnd | None:
        """The sweep's end (to send with the page that settled last), or None while it runs."""
        if not self.over:
            return None
        if self.full:
            listed = self.total_pages is not None and self.settled >= set(range(1, self.total_pages + 1))
        else:
            listed = True  # the first sweep of the snapshot listed the pages; these were its gaps
        return SweepEnd(listed, self.total_records, self.records_changed, self.skipped, self.full)


def catalog_page_limit(name: str, value: Any) -> int:
    """The ``PMP_CATALOG_PAGE_LIMIT`` setting: 0 (no catalog sweep) to 1000 (PMP's cap)."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number <= MAX_CATALOG_PAGE_LIMIT:
        raise ConfigError(f"{name} must be an integer from 0 (no catalog) to {MAX_CATALOG_PAGE_LIMIT}, got {value!r}")
    return number
