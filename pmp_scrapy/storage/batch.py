"""A batch of pages waiting for one transaction, and what its commit left (no SQL here).

The pipeline fills a :class:`Batch`; :meth:`pmp_scrapy.storage.store.Store.commit_batch` writes it
and answers with a :class:`CheckpointResult`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmp_scrapy.rows import MappingRow


@dataclass
class Batch:
    """Pages to commit in one transaction.

    Each page's mapping rows and systems are kept pickled, one ``bytes`` per page, until the
    commit unpacks them a page at a time: ten pages of live tuples cost some 4 MB, pickled about
    a quarter of that, and the peak RSS budget is 100 MB (spec NFR-1). The pipeline commits a
    batch early once ``packed_bytes`` reaches ``PMP_BATCH_BYTES``. ``mappings`` and
    ``systems`` given to the constructor are one page. A page's systems are the ones it reported
    completely: their stored rows that the page no longer lists are retired at commit."""

    snapshot_id: int
    customer: str
    mappings: InitVar[list[MappingRow] | None] = None
    systems: InitVar[list[dict[str, Any]] | None] = None
    gaps: list[dict[str, Any]] = field(default_factory=list)
    healed_pages: list[int] = field(default_factory=list)
    last_page: int | None = None
    total_pages: int | None = None
    total_records: int | None = None
    denominator: int | None = None
    mapping_count: int = 0
    packed_bytes: int = 0  # the pickled pages' size: PMP_BATCH_BYTES bounds it
    #: page -> the totalRecords it was answered with, for the pages of this batch
    page_totals: dict[int, int] = field(default_factory=dict)
    max_retire_share: float = 0.2  # PMP_MAX_RETIRE_SHARE
    _packed_pages: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self, mappings: list[MappingRow] | None, systems: list[dict[str, Any]] | None) -> None:
        if mappings or systems:
            self.add_page(mappings or [], systems or [])

    def add_page(self, rows: list[MappingRow], systems: list[dict[str, Any]]) -> None:
        """Buffer one page: its mapping rows and the systems it reported (adds to ``packed_bytes``)."""
        if rows or systems:
            packed = pickle.dumps((rows, systems), protocol=pickle.HIGHEST_PROTOCOL)
            self._packed_pages.append(packed)
            self.packed_bytes += len(packed)
            self.mapping_count += len(rows)

    def add_mappings(self, rows: list[MappingRow]) -> None:
        """Buffer mapping rows of systems the batch does not report (nothing is retired)."""
        self.add_page(rows, [])

    def pages(self) -> Iterator[tuple[list[MappingRow], list[dict[str, Any]]]]:
        """The buffered pages, ``(rows, systems)``, in the order they were added."""
        for packed in self._packed_pages:
            yield pickle.loads(packed)

    def mapping_pages(self) -> Iterator[list[MappingRow]]:
        """The buffered rows, page by page, in the order they were added."""
        for rows, _systems in self.pages():
            if rows:
                yield rows


@dataclass
class CheckpointResult:
    """What a committed batch left in the checkpoint table."""

    last_page: int | None
    systems_extracted: int
    patches_extracted: int
    coverage: int
    coverage_pct: float
    snapshot_complete: bool
    #: pages to read again before the snapshot is complete: answered before the tenant changed,
    #: before a system met twice (``seen_twice_at``: the page it was met again on), or where
    #: ``unseen_systems`` present systems were last seen
    reread_pages: list[int] = field(default_factory=list)
    seen_twice_at: int | None = None
    unseen_systems: int = 0
    reconciliation: Reconciliation | None = None
    changes: Any = None  # storage.history.Changes: what the batch changed


@dataclass
class Reconciliation:
    """What the end of a complete, gap-free snapshot retired (or refused to)."""

    state: str  # reconciled | refused
    retired_systems: int
    retired_mappings: int
    present_systems: int
    message: str = ""


def ordered_unique(rows: list[MappingRow]) -> Iterator[MappingRow]:
    """One row per ``(resource_id, patch_id)``, the later one winning, in key order.

    PostgreSQL refuses to update one row twice in a statement, and key order makes concurrent
    jobs that share keys lock them in the same order. A page lists each system's rows together,
    so the work is done per system, without a second index of every row."""
    spans: dict[str | None, list[tuple[int, int]]] = {}
    start = 0
    for index in range(1, len(rows) + 1):
        if index == len(rows) or rows[index][0] != rows[start][0]:
            spans.setdefault(rows[start][0], []).append((start, index))
            start = index
    for resource_id in sorted(spans, key=lambda rid: rid or ""):
        ranges = spans[resource_id]
        if len(ranges) == 1:
            first, end = ranges[0]
            system_rows = rows[first:end]
        else:  # the system came twice (it moved between pages): union, later rows win
            system_rows = list({row[1]: row for first, end in ranges for row in rows[first:end]}.values())
        system_rows.sort(key=lambda row: row[1] or "")
        yield from system_rows
