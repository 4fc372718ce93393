"""Every query the extractor runs: upserts, checkpoints, snapshots, gaps and run records.

One :class:`Store` per crawl, shared by the pipeline (writes batches) and the checkpoint
extension (plans the run, records its outcome). Methods are synchronous; callers on the
reactor run the heavy ones in a thread. Each :meth:`Store.commit_batch` is one transaction:
mapping rows, gaps and the checkpoint that covers them commit together or not at all.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, inspect, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pmp_scrapy.errors import NoDatabase, SnapshotIdConflict, StorageError
from pmp_scrapy.plan import RunState
from pmp_scrapy.storage import rollup
from pmp_scrapy.storage.batch import Batch, CheckpointResult
from pmp_scrapy.storage.commit import commit_batch, coverage_query, utcnow
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
    checkpoints,
    gap_state,
    gaps,
    patch_system_mapping,
    runs,
    snapshot_pages,
    snapshots,
    systems,
)

logger = logging.getLogger(__name__)

_TRANSIENT_ATTEMPTS = 3


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
        opened, self._engine = self._engine, None
        if opened is not None:
            opened.dispose()
        path = sqlite_path(self.url)
        if path is not None:
            make_private(path, known_sqlite=opened is not None)

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
            except (UnicodeError, OverflowError) as exc:
                # The driver's own refusal of a value (a lone surrogate, an integer past 64 bits):
                # not an SQLAlchemyError, but a database failure all the same.
                raise StorageError(f"database error while {what}: a value could not be stored "
                                   f"({type(exc).__name__})") from None
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
        """Distinct systems with mappings (contract query; per customer for MSP tenants), read at
        the start of a run. Checkpoints count the report roll-ups instead; when those disagree
        with the mappings (rows deleted or written outside the extractor, e.g. a retention job),
        the customer's roll-ups are rebuilt here first, so every later count is the contract's."""
        return self._run("reading coverage", self._coverage, customer)

    @staticmethod
    def _coverage(conn: Connection, customer: str) -> int:
        covered = int(conn.execute(coverage_query(customer)).scalar_one())
        if not _rollup_agrees(conn, customer, covered):
            present = [row[0] for row in conn.execute(select(systems.c.resource_id).where(
                systems.c.customer == customer))]
            logger.warning("the report roll-ups of customer %r disagree with patch_system_mapping (rows changed "
                           "outside the extractor): rebuilding them for its %d systems", customer, len(present),
                           extra={"event_type": "rollup_rebuilt", "systems": len(present)})
            rollup.refresh(conn, present)
        return covered

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
        state.catalog_state = snap["catalog_state"]
        state.total_pages = snap["total_pages"]
        state.total_records = snap["total_records"]
        state.page_limit = snap["page_limit"]
        state.last_complete_at = conn.execute(
            select(func.max(snapshots.c.completed_at)).where(
                snapshots.c.customer == customer, snapshots.c.state == "complete")).scalar()
        state.page_totals = {int(page): int(total) for page, total in conn.execute(
            select(snapshot_pages.c.page_num, snapshot_pages.c.total_records).where(
                snapshot_pages.c.snapshot_id == state.snapshot_id, snapshot_pages.c.total_records.is_not(None)))}
        point = conn.execute(select(checkpoints.c.last_page, checkpoints.c.systems_extracted,
                                    checkpoints.c.patches_extracted).where(
            checkpoints.c.snapshot_id == state.snapshot_id)).first()
        state.last_page = point[0] if point else None
        state.mappings_per_system = point[2] / point[1] if point and point[1] else None
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
    def start_snapshot(self, customer: str, page_limit: int, *, abandon: int | None = None,
                       source: str = "pmp") -> int:
        """Create a new running snapshot (marking ``abandon`` abandoned) and return its id.

        Ids are allocated above every snapshot id any table has seen, so a checkpoint or gap
        left by an earlier tool is never mistaken for ours."""
        for _ in range(5):
            try:
                return self._run("starting a snapshot", _start_snapshot, customer, page_limit, abandon, source)
            except SnapshotIdConflict:
                continue
        raise StorageError("could not allocate a snapshot id: too many concurrent jobs")

    @staticmethod
    def foreign_data(url: str, *, busy_timeout: float = 15.0) -> str | None:
        """Why the database at ``url`` is not a demo database (it holds snapshots of a real PMP, or
        mappings of another tool), or ``None`` when it is absent or holds demo data only. Reads
        without creating or changing anything (demo mode must leave a production database as it is)."""
        try:
            engine = open_engine(url, busy_timeout=busy_timeout, create=False)
        except NoDatabase:
            return None
        try:
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
                if snapshots.name in tables:
                    columns = {c["name"] for c in inspect(conn).get_columns(snapshots.name)}
                    query = select(func.count()).select_from(snapshots)
                    if "source" in columns:  # older databases have no source: every snapshot is real
                        query = query.where(or_(snapshots.c.source.is_(None), snapshots.c.source != "demo"))
                    real = conn.execute(query).scalar_one()
                    if real:
                        return f"it holds {real} snapshot(s) of a real PMP server"
                elif patch_system_mapping.name in tables and conn.execute(
                        select(func.count()).select_from(patch_system_mapping)).scalar_one():
                    return "it holds patch mappings written by another tool"
        except SQLAlchemyError as exc:
            return f"it cannot be read ({describe_error(exc)})"
        finally:
            engine.dispose()
        return None

    def undo_snapshot_start(self, snapshot_id: int, abandoned: int | None) -> None:
        """Take back a snapshot that a failed run started but never wrote to: it is deleted and
        the snapshot it replaced runs again, so a run that fails authentication abandons nothing."""
        def undo(conn: Connection) -> None:
            conn.execute(delete(snapshots).where(snapshots.c.snapshot_id == snapshot_id))
            if abandoned is not None:
                conn.execute(update(snapshots).where(snapshots.c.snapshot_id == abandoned,
                                                     snapshots.c.state == "abandoned")
                             .values(state="running", completed_at=None))
        self._run("taking back a snapshot", undo)

    def set_managed_total(self, snapshot_id: int, managed_total: int) -> None:
        """Remember the inventory's managed-system count on the snapshot."""
        self._run("saving the managed total", lambda conn: conn.execute(
            update(snapshots).where(snapshots.c.snapshot_id == snapshot_id)
            .values(managed_total=managed_total)))

    # --- the batch ----------------------------------------------------------------------------------
    def commit_batch(self, batch: Batch) -> CheckpointResult:
        """Upsert the batch's rows and move the checkpoint, in one transaction."""
        return self._run("committing a batch", commit_batch, batch)

    # --- the patch catalog -----------------------------------------------------------------------------
    def commit_catalog_page(self, commit: Any) -> Any:
        """One catalog answer (rows, gap or "unavailable") in one transaction; see
        :mod:`pmp_scrapy.storage.catalog` (``commit`` is its ``CatalogCommit``)."""
        from pmp_scrapy.storage.catalog import commit_catalog

        return self._run("committing a catalog page", commit_catalog, commit)

    # --- runs ------------------------------------------------------------------------------------------
    def record_run(self, **values: Any) -> None:
        """Append one row to ``dcapi_runs``."""
        self._run("recording the run", lambda conn: conn.execute(insert(runs).values(**values)))

    def previous_coverage(self, customer: str) -> int | None:
        """Systems with mappings at the end of the customer's previous run."""
        return self._run("reading the last run", lambda conn: conn.execute(
            select(runs.c.systems_with_mappings).where(runs.c.customer == customer)
            .order_by(runs.c.run_id.desc()).limit(1)).scalar(), write=False)


def _rollup_agrees(conn: Connection, customer: str, covered: int) -> bool:
    """Whether the customer's roll-ups count the systems and mappings patch_system_mapping holds
    for its present systems (two counts over an index: once a run, never per checkpoint)."""
    if rollup.coverage(conn, customer) != covered:
        return False
    present = select(systems.c.resource_id).where(systems.c.customer == customer, systems.c.retired_at.is_(None))
    mappings = conn.execute(select(func.count()).select_from(patch_system_mapping).where(
        patch_system_mapping.c.resource_id.in_(present))).scalar_one()
    rolled = conn.execute(text("SELECT COALESCE(SUM(mappings), 0) FROM dcapi_system_rollup WHERE customer = :customer"),
                          {"customer": customer}).scalar_one()
    return int(mappings) == int(rolled)


def _start_snapshot(conn: Connection, customer: str, page_limit: int, abandon: int | None, source: str) -> int:
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
    try:
        conn.execute(insert(snapshots).values(
            snapshot_id=snapshot_id, customer=customer, state="running",
            page_limit=page_limit, started_at=utcnow(), source=source))
    except IntegrityError:
        raise SnapshotIdConflict(f"snapshot id {snapshot_id} was taken by another job") from None
    return snapshot_id
