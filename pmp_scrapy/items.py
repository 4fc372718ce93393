"""Items the spider yields: one per page fetched, one per page that could not be fetched, and
the managed-system total. A page's systems travel as normalised rows (:mod:`pmp_scrapy.rows`),
never as the parsed JSON, which is several times their size."""

from __future__ import annotations

from dataclasses import dataclass, field

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
