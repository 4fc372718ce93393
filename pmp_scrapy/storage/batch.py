"""A batch of pages waiting for one transaction, and what its commit left (no SQL here).

The pipeline fills a :class:`Batch`; :meth:`pmp_scrapy.storage.store.Store.commit_batch` writes it
and answers with a :class:`CheckpointResult`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from pmp_scrapy.rows import pack_part, unpack_part

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

    def add_page(self, rows: list[MappingRow], systems: list[dict[str, Any]], *,
                 packed: list[bytes] | None = None, packed_mappings: int = 0) -> None:
        """Buffer one page: its mapping rows and the systems it reported (adds to ``packed_bytes``).
        A page of more than :data:`PART_ROWS` rows is kept as parts of whole systems
        (:func:`page_parts`), each packed and committed on its own, so neither packing nor the
        commit ever holds such a page's rows twice. ``packed`` are the page's first parts, packed
        while it was read (:func:`pmp_scrapy.rows.page_rows`, ``packed_mappings`` rows in all);
        ``rows`` and ``systems`` are then the rest of the page."""
        for part in packed or ():
            self._packed_pages.append(part)
            self.packed_bytes += len(part)
        self.mapping_count += packed_mappings
        if rows or systems:
            parts = page_parts(rows, systems, PART_ROWS) if len(rows) > PART_ROWS else iter([(rows, systems)])
            for part_rows, part_systems in parts:
                part = pack_part(part_rows, part_systems)
                self._packed_pages.append(part)
                self.packed_bytes += len(part)
            self.mapping_count += len(rows)

    def add_mappings(self, rows: list[MappingRow]) -> None:
        """Buffer mapping rows of systems the batch does not report (nothing is retired)."""
        self.add_page(rows, [])

    def pages(self) -> Iterator[tuple[list[MappingRow], list[dict[str, Any]]]]:
        """The buffered pages (or parts of a page, see :meth:`add_page`), ``(rows, systems)``, in
        the order they were added; one is unpacked at a time."""
        for packed in self._packed_pages:
            yield unpack_part(packed)

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


#: Rows of a page above which it is packed and committed in parts (:func:`page_parts`): a usual
#: page has ~1,500; 20,000 rows are some 3 MB live, one part's share of a commit.
PART_ROWS = 20_000


def _spans(rows: list[MappingRow]) -> dict[str | None, list[tuple[int, int]]]:
    """resource_id -> the ``(start, end)`` ranges of ``rows`` where that system's rows run."""
    spans: dict[str | None, list[tuple[int, int]]] = {}
    start = 0
    for index in range(1, len(rows) + 1):
        if index == len(rows) or rows[index][0] != rows[start][0]:
            spans.setdefault(rows[start][0], []).append((start, index))
            start = index
    return spans


def page_parts(rows: list[MappingRow], systems: list[dict[str, Any]],
               limit: int) -> Iterator[tuple[list[MappingRow], list[dict[str, Any]]]]:
    """One page's rows and systems as parts of whole systems, in resource_id order, each of at
    least ``limit`` rows but the last: committed one after the other they store what the whole
    page stores. Every system is in one part with all its rows (a page's systems are retired
    from what they no longer list); a system the page lists twice has its rows united there, the
    later winning per patch, as :func:`ordered_unique` unites them. Reads only its arguments."""
    spans = _spans(rows)
    listed: dict[str | None, list[dict[str, Any]]] = {}
    for system in systems:
        listed.setdefault(system["resource_id"], []).append(system)
    part_rows: list[MappingRow] = []
    part_systems: list[dict[str, Any]] = []
    for resource_id in sorted(spans.keys() | listed.keys(), key=lambda rid: rid or ""):
        ranges = spans.get(resource_id, [])
        if len(ranges) == 1:
            part_rows.extend(rows[ranges[0][0]:ranges[0][1]])
        elif ranges:
            part_rows.extend({row[1]: row for first, end in ranges for row in rows[first:end]}.values())
        part_systems.extend(listed.get(resource_id, ()))
        if len(part_rows) >= limit:
            yield part_rows, part_systems
            part_rows, part_systems = [], []
    if part_rows or part_systems:
        yield part_rows, part_systems


def ordered_unique(rows: list[MappingRow]) -> Iterator[MappingRow]:
    """One row per ``(resource_id, patch_id)``, the later one winning, in key order.

    PostgreSQL refuses to update one row twice in a statement, and key order makes concurrent
    jobs that share keys lock them in the same order. A page lists each system's rows together,
    so the work is done per system, without a second index of every row."""
    spans = _spans(rows)
    for resource_id in sorted(spans, key=lambda rid: rid or ""):
        ranges = spans[resource_id]
        if len(ranges) == 1:
            first, end = ranges[0]
            system_rows = rows[first:end]
        else:  # the system came twice (it moved between pages): union, later rows win
            system_rows = list({row[1]: row for first, end in ranges for row in rows[first:end]}.values())
        system_rows.sort(key=lambda row: row[1] or "")
        yield from system_rows
