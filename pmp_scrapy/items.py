"""Items the spider yields: one per page fetched, one per page that could not be fetched, and
the managed-system total. A page's systems travel as normalised rows (:mod:`pmp_scrapy.rows`),
never as the parsed JSON, which is several times their size."""

from __future__ import annotations

from dataclasses import dataclass, field

from pmp_scrapy.catalog import CatalogRows, SweepEnd
from pmp_scrapy.rows import PageRows


@dataclass
class PatchPage:
    """One DCAPI page that answered with a well-formed envelope."""

    snapshot_id: int
    page: int
    total_pages: int
    total_records: int
    rows: PageRows = field(default_factory=PageRows)
    retried_gap: bool = False


@dataclass
class PageGap:
    """One DCAPI page that ended without data after its last attempt."""

    snapshot_id: int
    page: int
    error_type: str
    error_message: str
    response_sample: str | None
    attempts: int
    http_status: int | None = None
    retried_gap: bool = False


@dataclass
class InventoryTotal:
    """The managed-system count reported by ``/api/1.4/som/computers``."""

    snapshot_id: int
    managed_total: int


# --- the patch catalog (/dcapi/threats/patches) ------------------------------------------------------

@dataclass
class CatalogPage:
    """One catalog page that answered; ``end`` is set on the last catalog answer of the run."""

    snapshot_id: int
    page: int
    total_pages: int | None
    total_records: int | None
    rows: CatalogRows = field(default_factory=CatalogRows)
    retried_gap: bool = False
    end: SweepEnd | None = None


@dataclass
class CatalogGap:
    """One catalog page that ended without data after its last attempt (stored as the gap of
    ``page_num = -page``, see :func:`pmp_scrapy.catalog.gap_page_num`)."""

    snapshot_id: int
    page: int
    error_type: str
    error_message: str
    response_sample: str | None
    attempts: int
    http_status: int | None = None
    retried_gap: bool = False
    end: SweepEnd | None = None


@dataclass
class CatalogUnavailable:
    """The server has no catalog (HTTP 404, or error 10022 "not supported")."""

    snapshot_id: int
    reason: str
