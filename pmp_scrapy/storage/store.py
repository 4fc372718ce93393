"""Every query the extractor runs: upserts, checkpoints, snapshots, gaps and run records.

One :class:`Store` per crawl, shared by the pipeline (writes batches) and the checkpoint
extension (plans the run, records its outcome). Methods are synchronous; callers on the
reactor run the heavy ones in a thread. Each :meth:`Store.commit_batch` is one transaction:
mapping rows, gaps and the checkpoint that covers them commit together or not at all.
"""

from __future__ import annotations

import logging
import pickle
import time
import weakref
from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.engine import (
    SNAPSHOT_LOCK_KEY,
    describe_error,
    is_transient,
    make_private,
    open_engine,
    sqlite_path,
    writer,
)
from pmp_scrapy.storage.schema import (
    MAPPING_FIELDS,
    MAPPING_ROW_FIELDS,
    checkpoints,
    gap_state,
    gaps,
    patch_system_mapping,
    runs,
    snapshots,
    systems,
)

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from pmp_scrapy.rows import MappingRow

logger = logging.getLogger(__name__)

_CHUNK = 500  # rows a statement: SQLAlchemy's parameter copies stay small (NFR-1)
_TRANSIENT_ATTEMPTS = 3


def utcnow() -> datetime:
    """Naive UTC now, as the TIMESTAMP columns store it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class RunState:
    """What the database says about a customer's extraction before a run."""

    snapshot_id: int | None = None
    snapshot_state: str | None = None
    last_page: int | None = None
    total_pages: int | None = None
    managed_total: int | None = None
    open_gap_pages: list[int] = field(default_factory=list)
    orphan_checkpoint_snapshot: int | None = None


@dataclass
class Batch:
    """Rows of several pages to commit in one transaction.

    Mapping rows are kept pickled, one ``bytes`` per page, until the commit unpacks them a page
    at a time: ten pages of live tuples cost some 4 MB, pickled about a quarter of that, and the
    peak RSS budget is 100 MB (spec NFR-1). ``mappings`` given to the constructor are one page."""

    snapshot_id: int
    customer: str
    mappings: InitVar[list[MappingRow] | None] = None
    systems: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    healed_pages: list[int] = field(default_factory=list)
    last_page: int | None = None
    total_pages: int | None = None
    total_records: int | None = None
    denominator: int | None = None
    mapping_count: int = 0
    _packed_pages: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self, mappings: list[MappingRow] | None) -> None:
        if mappings:
            self.add_mappings(mappings)

    def add_mappings(self, rows: list[MappingRow]) -> None:
        """Buffer one page's mapping rows."""
        if rows:
            self._packed_pages.append(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
            self.mapping_count += len(rows)

    def mapping_pages(self) -> Iterator[list[MappingRow]]:
        """The buffered rows, page by page, in the order they were added."""
        for packed in self._packed_pages:
            yield pickle.loads(packed)  # noqa: S301 - bytes this process pickled itself


@dataclass
class CheckpointResult:
    """What a committed batch left in the checkpoint table."""

    last_page: int | None
    systems_extracted: int
    patches_extracted: int
    coverage: int
    coverage_pct: float
    snapshot_complete: bool


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


class Store:
    """Database access for one crawl."""

    def __init__(self, url: str, *, busy_timeout: float = 15.0) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self._engine: Engine | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self, *, create: bool = True) -> None:
        """Connect and create absent tables; raises :class:`StorageError`."""
        if self._engine is None:
            self._engine = open_engine(self.url, busy_timeout=self.busy_timeout, create=create)

    def close(self) -> None:
        """Dispose of the connection pool and re-assert the file mode."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        path = sqlite_path(self.url)
        if path is not None:
            make_private(path)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self.open()
        assert self._engine is not None
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _run(self, what: str, fn: Any, *args: Any, write: bool = True) -> Any:
        """``fn(conn, *args)`` in one transaction. A write transaction that PostgreSQL aborts
        for a concurrency conflict (deadlock, serialisation failure) is run again, a few times:
        every write here is an idempotent upsert or a fresh insert, so a repeat is safe."""
        for attempt in range(1, _TRANSIENT_ATTEMPTS + 1):
            try:
                if write:
                    with writer(self.engine).begin() as conn:
                        return fn(conn, *args)
                with self.engine.connect() as conn:
                    return fn(conn, *args)
            except SQLAlchemyError as exc:
                if write and attempt < _TRANSIENT_ATTEMPTS and is_transient(exc):
                    logger.warning("database conflict while %s (%s); retrying the transaction",
                                   what, describe_error(exc), extra={"event_type": "db_retry", "attempt": attempt})
                    time.sleep(0.2 * attempt)
                    continue
                raise StorageError(f"database error while {what}: {describe_error(exc)}") from None
        raise AssertionError("unreachable")

    # --- reads ------------------------------------------------------------------------------------
    def coverage(self, customer: str) -> int:
        """Distinct systems with mappings (contract query; per customer for MSP tenants)."""
        return self._run("reading coverage", self._coverage, customer, write=False)

    @staticmethod
    def _coverage(conn: Connection, customer: str) -> int:
        if not customer:
            query = select(func.count(func.distinct(patch_system_mapping.c.resource_id)))
        else:
            query = select(func.count(func.distinct(patch_system_mapping.c.resource_id))).where(
                patch_system_mapping.c.resource_id.in_(
                    select(systems.c.resource_id).where(systems.c.customer == customer)
                )
            )
        return int(conn.execute(query).scalar_one())

    def load_state(self, customer: str) -> RunState:
        """The customer's latest snapshot, its checkpoint and open gaps."""
        return self._run("reading the checkpoint", self._load_state, customer, write=False)

    @staticmethod
    def _load_state(conn: Connection, customer: str) -> RunState:
        state = RunState()
        snap = conn.execute(
            select(snapshots).where(snapshots.c.customer == customer)
            .order_by(snapshots.c.snapshot_id.desc()).limit(1)
        ).mappings().first()
        managed = conn.execute(
            select(snapshots.c.managed_total).where(
                snapshots.c.customer == customer, snapshots.c.managed_total.is_not(None)
            ).order_by(snapshots.c.snapshot_id.desc()).limit(1)
        ).scalar()
        state.managed_total = managed
        if not customer:
            # A checkpoint newer than every snapshot we know points at nothing we made.
            newest = conn.execute(
                select(checkpoints.c.snapshot_id).order_by(checkpoints.c.checkpoint_id.desc()).limit(1)
            ).scalar()
            if newest is not None and conn.execute(
                select(snapshots.c.snapshot_id).where(snapshots.c.snapshot_id == newest)
            ).first() is None:
                state.orphan_checkpoint_snapshot = int(newest)
        if snap is None:
            return state
        state.snapshot_id = int(snap["snapshot_id"])
        state.snapshot_state = snap["state"]
        state.total_pages = snap["total_pages"]
        state.last_page = conn.execute(
            select(checkpoints.c.last_page).where(checkpoints.c.snapshot_id == state.snapshot_id)
        ).scalar()
        state.open_gap_pages = [
            int(row[0]) for row in conn.execute(
                select(gaps.c.page_num)
                .select_from(gaps.outerjoin(gap_state, and_(
                    gap_state.c.snapshot_id == gaps.c.snapshot_id,
                    gap_state.c.page_num == gaps.c.page_num)))
                .where(gaps.c.snapshot_id == state.snapshot_id, gap_state.c.resolved_at.is_(None))
                .order_by(gaps.c.page_num)
            )
        ]
        return state

    # --- snapshots ------------------------------------------------------------------------------
    def start_snapshot(self, customer: str, page_limit: int, *, abandon: int | None = None) -> int:
        """Create a new running snapshot (marking ``abandon`` abandoned) and return its id.

        Ids are allocated above every snapshot id any table has seen, so a checkpoint or gap
        left by an earlier tool is never mistaken for ours."""
        for _ in range(5):
            try:
                return self._run("starting a snapshot", self._start_snapshot, customer, page_limit, abandon)
            except StorageError as exc:
                if "IntegrityError" not in str(exc) and "UniqueViolation" not in str(exc):
                    raise
        raise StorageError("could not allocate a snapshot id: too many concurrent jobs")

    @staticmethod
    def _start_snapshot(conn: Connection, customer: str, page_limit: int, abandon: int | None) -> int:
        if conn.dialect.name == "postgresql":
            # Jobs of other customers allocate ids from the same sequence of max()+1: take
            # turns (SQLite's BEGIN IMMEDIATE already serialises writers).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SNAPSHOT_LOCK_KEY})
        if abandon is not None:
            conn.execute(update(snapshots).where(
                snapshots.c.snapshot_id == abandon, snapshots.c.state == "running"
            ).values(state="abandoned", completed_at=utcnow()))
        highest = max(
            conn.execute(select(func.max(table.c.snapshot_id))).scalar() or 0
            for table in (snapshots, checkpoints, gaps)
        )
        snapshot_id = int(highest) + 1
        conn.execute(insert(snapshots).values(
            snapshot_id=snapshot_id, customer=customer, state="running",
            page_limit=page_limit, started_at=utcnow()))
        return snapshot_id

    def set_managed_total(self, snapshot_id: int, managed_total: int) -> None:
        """Remember the inventory's managed-system count on the snapshot."""
        self._run("saving the managed total", lambda conn: conn.execute(
            update(snapshots).where(snapshots.c.snapshot_id == snapshot_id)
            .values(managed_total=managed_total)))

    # --- the batch ----------------------------------------------------------------------------------
    def commit_batch(self, batch: Batch) -> CheckpointResult:
        """Upsert the batch's rows and move the checkpoint, in one transaction."""
        return self._run("committing a batch", self._commit_batch, batch)

    def _insert(self) -> Any:
        # Imported on first use: an SQLite run need not carry PostgreSQL's dialect (3 MB, NFR-1).
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            return postgresql_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert

    def _commit_batch(self, conn: Connection, batch: Batch) -> CheckpointResult:
        dialect_insert = self._insert()
        now = utcnow()
        stmt = dialect_insert(patch_system_mapping)
        stmt = stmt.on_conflict_do_update(
            index_elements=["resource_id", "patch_id"],
            set_={name: stmt.excluded[name] for name in MAPPING_FIELDS},
        )
        # Page by page, in arrival order: a system that moved between pages during the sweep
        # ends with its later page's values (upserts never delete, so the union stays).
        for page_rows in batch.mapping_pages():
            chunk: list[dict[str, Any]] = []
            for row in ordered_unique(page_rows):
                chunk.append(dict(zip(MAPPING_ROW_FIELDS, row)))
                if len(chunk) == _CHUNK:
                    conn.execute(stmt, chunk)
                    chunk = []
            if chunk:
                conn.execute(stmt, chunk)

        if batch.systems:
            by_id = sorted({s["resource_id"]: s for s in batch.systems}.items())
            sys_stmt = dialect_insert(systems)
            sys_stmt = sys_stmt.on_conflict_do_update(
                index_elements=["customer", "resource_id"],
                set_={
                    "resource_name": sys_stmt.excluded.resource_name,
                    "patch_count": sys_stmt.excluded.patch_count,
                    "last_seen_snapshot": sys_stmt.excluded.last_seen_snapshot,
                    "last_seen_page": sys_stmt.excluded.last_seen_page,
                    "last_seen_at": sys_stmt.excluded.last_seen_at,
                },
            )
            conn.execute(sys_stmt, [
                {**s, "customer": batch.customer, "first_seen_snapshot": batch.snapshot_id,
                 "last_seen_snapshot": batch.snapshot_id, "last_seen_at": now}
                for _, s in by_id
            ])

        for gap in sorted(batch.gaps, key=lambda g: g["page_num"]):
            gap_stmt = dialect_insert(gaps).values(
                snapshot_id=batch.snapshot_id, page_num=gap["page_num"], error_type=gap["error_type"],
                error_message=gap["error_message"], response_sample=gap["response_sample"],
                attempts=gap["attempts"], created_at=now)
            conn.execute(gap_stmt.on_conflict_do_update(
                index_elements=["snapshot_id", "page_num"],
                set_={"error_type": gap_stmt.excluded.error_type,
                      "error_message": gap_stmt.excluded.error_message,
                      "response_sample": gap_stmt.excluded.response_sample,
                      "attempts": gaps.c.attempts + gap_stmt.excluded.attempts}))
            state_stmt = dialect_insert(gap_state).values(
                snapshot_id=batch.snapshot_id, page_num=gap["page_num"], http_status=gap.get("http_status"),
                runs_attempted=1, last_attempt_at=now, resolved_at=None)
            conn.execute(state_stmt.on_conflict_do_update(
                index_elements=["snapshot_id", "page_num"],
                set_={"http_status": state_stmt.excluded.http_status,
                      "runs_attempted": gap_state.c.runs_attempted + 1,
                      "last_attempt_at": now, "resolved_at": None}))

        for page in sorted(batch.healed_pages):
            healed = dialect_insert(gap_state).values(
                snapshot_id=batch.snapshot_id, page_num=page, runs_attempted=1,
                last_attempt_at=now, resolved_at=now)
            conn.execute(healed.on_conflict_do_update(
                index_elements=["snapshot_id", "page_num"],
                set_={"resolved_at": now, "last_attempt_at": now,
                      "runs_attempted": gap_state.c.runs_attempted + 1}))

        if batch.total_pages is not None:
            conn.execute(update(snapshots).where(snapshots.c.snapshot_id == batch.snapshot_id)
                         .values(total_pages=batch.total_pages, total_records=batch.total_records))
        return self._save_checkpoint(conn, batch, now)

    def _save_checkpoint(self, conn: Connection, batch: Batch, now: datetime) -> CheckpointResult:
        systems_extracted, patches_extracted = conn.execute(
            select(func.count(), func.coalesce(func.sum(systems.c.patch_count), 0)).where(
                systems.c.customer == batch.customer, systems.c.last_seen_snapshot == batch.snapshot_id)
        ).one()
        coverage = self._coverage(conn, batch.customer)
        denominator = batch.denominator or 0
        coverage_pct = round(100.0 * coverage / denominator, 2) if denominator else 0.0
        last_page = batch.last_page
        if last_page is None:
            last_page = conn.execute(select(checkpoints.c.last_page).where(
                checkpoints.c.snapshot_id == batch.snapshot_id)).scalar()
        complete = False
        if last_page is not None:
            values = {"last_page": last_page, "systems_extracted": int(systems_extracted),
                      "patches_extracted": int(patches_extracted), "coverage_pct": coverage_pct,
                      "updated_at": now}
            stmt = self._insert()(checkpoints).values(snapshot_id=batch.snapshot_id, created_at=now, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["snapshot_id"], set_=values))
            total = batch.total_pages
            if total is None:
                total = conn.execute(select(snapshots.c.total_pages).where(
                    snapshots.c.snapshot_id == batch.snapshot_id)).scalar()
            if total is not None and last_page >= total:
                complete = True
                conn.execute(update(snapshots).where(
                    snapshots.c.snapshot_id == batch.snapshot_id, snapshots.c.state == "running"
                ).values(state="complete", completed_at=now))
        return CheckpointResult(last_page, int(systems_extracted), int(patches_extracted),
                                coverage, coverage_pct, complete)

    # --- runs ------------------------------------------------------------------------------------------
    def record_run(self, **values: Any) -> None:
        """Append one row to ``dcapi_runs``."""
        self._run("recording the run", lambda conn: conn.execute(insert(runs).values(**values)))

    def previous_coverage(self, customer: str) -> int | None:
        """Systems with mappings at the end of the customer's previous run."""
        return self._run("reading the last run", lambda conn: conn.execute(
            select(runs.c.systems_with_mappings).where(runs.c.customer == customer)
            .order_by(runs.c.run_id.desc()).limit(1)).scalar(), write=False)


_stores: weakref.WeakKeyDictionary[Crawler, Store] = weakref.WeakKeyDictionary()


def get_store(crawler: Crawler) -> Store:
    """The crawl's shared :class:`Store` (not yet opened)."""
    from pmp_scrapy.config import get_config

    store = _stores.get(crawler)
    if store is None:
        config = get_config(crawler)
        store = Store(config.database_url, busy_timeout=config.sqlite_busy_timeout)
        _stores[crawler] = store
    return store
