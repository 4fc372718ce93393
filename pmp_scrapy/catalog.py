"""The patch catalog, ``/dcapi/threats/patches`` ("All Applicable Patches"): planning one run's
catalog sweep, and the conventions the store and ``scrapy status`` share. Pure: no HTTP, no SQL.

- :class:`CatalogSweep` decides which catalog pages a run asks for and when its sweep is over.
- Reading one answer (:func:`parse_catalog`, :func:`catalog_rows`, :func:`unavailable_reason`,
  :class:`CatalogRows` ...) lives in :mod:`pmp_scrapy.catalog_answer`; its public names are
  importable from here too.

Catalog gaps share the seed's gap table with the system report: catalog page *N* is stored
as ``page_num = -N`` (:func:`gap_page_num`), so the table's key ``(snapshot_id, page_num)``
stays unique and system-report pages (always >= 1) are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pmp_scrapy.catalog_answer import (
    CATALOG_ROW_FIELDS,
    KEY_CHARS,
    UNSUPPORTED_ERROR_CODE,
    CatalogEnvelope,
    CatalogRow,
    CatalogRows,
    EndpointUnsupported,
    catalog_rows,
    cve_ids,
    parse_catalog,
    reboot_flag,
    system_count,
    unavailable_reason,
)
from pmp_scrapy.errors import ConfigError

__all__ = [
    "CATALOG_PATH", "CATALOG_ROW_FIELDS", "KEY_CHARS", "MAX_CATALOG_PAGES", "MAX_CATALOG_PAGE_LIMIT",
    "UNSUPPORTED_ERROR_CODE", "CatalogEnvelope", "CatalogRow", "CatalogRows", "CatalogSweep", "EndpointUnsupported",
    "SweepEnd", "catalog_page_limit", "catalog_rows", "cve_ids", "describe_gap_page", "gap_page_num",
    "parse_catalog", "reboot_flag", "system_count", "unavailable_reason",
]

CATALOG_PATH = "/dcapi/threats/patches"
#: PMP's documented caps: ``page`` and ``pageLimit`` up to 1000.
MAX_CATALOG_PAGES = 1000
MAX_CATALOG_PAGE_LIMIT = 1000


# --- conventions shared with the store and `scrapy status` -------------------------------------------

def gap_page_num(page: int) -> int:
    """The ``page_num`` a catalog page's gap is stored under: catalog page N is ``-N``."""
    return -abs(page)


def describe_gap_page(page_num: int) -> tuple[str, int]:
    """``("catalog", N)`` for a catalog gap's ``page_num`` (-N), ``("systemreport", N)`` otherwise."""
    return ("catalog", -page_num) if page_num < 0 else ("systemreport", page_num)


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
