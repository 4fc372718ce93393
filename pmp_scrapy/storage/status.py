"""Read-only queries behind ``scrapy status``: coverage, snapshot, checkpoint, gaps and the last
run of each customer. Never creates the database or a table, never writes a row; a table that
an older database lacks reads as empty.

Coverage (systems with mappings) and the mapping count come from the report roll-ups
(:mod:`.rollup`: one row per present system with a mapping, holding its count) when they are
current, which gives the contract's ``COUNT(DISTINCT resource_id)`` without passing over every
mapping; from the mappings themselves when the roll-ups are absent, of another definition or
stale (a crawl by a version that keeps none wrote since).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.engine import describe_error, make_private, open_engine, safe_url, sqlite_path
from pmp_scrapy.storage.report_reader import NoExtractionData
from pmp_scrapy.storage.rollup import is_current
from pmp_scrapy.storage.schema import (
    checkpoints,
    gap_state,
    gaps,
    patch_system_mapping,
    runs,
    snapshots,
    system_rollup,
    systems,
)


@dataclass
class GapStatus:
    """One gap of the current snapshot."""

    page: int
    error_type: str
    attempts: int
    last_error: str | None
    http_status: int | None
    runs_attempted: int | None
    last_attempt_at: str | None
    resolved_at: str | None


@dataclass
class CustomerStatus:
    """Everything ``scrapy status`` reports for one customer ('' for a single tenant)."""

    customer: str
    systems_with_mappings: int = 0
    mappings: int = 0
    managed_total: int | None = None
    dcapi_total: int | None = None
    snapshot: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    open_gaps: list[GapStatus] = field(default_factory=list)
    resolved_gaps: list[GapStatus] = field(default_factory=list)
    last_run: dict[str, Any] | None = None
    last_complete_at: str | None = None  # when the latest complete sweep completed (UTC)
    retired_systems: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _when(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _row(mapping: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: _when(mapping[name]) if name.endswith("_at") else mapping[name] for name in names}


def _customers(conn: Connection, tables: set[str]) -> list[str]:
    found: set[str] = set()
    for table in (snapshots, runs):
        if table.name in tables:
            found.update(str(c or "") for (c,) in conn.execute(select(table.c.customer).distinct()))
    return sorted(found) or [""]


def _coverage(conn: Connection, customer: str, rolled_up: bool) -> tuple[int, int]:
    """(systems with mappings, their mappings) of ``customer``'s present systems: the roll-up's
    row count and sum when current, else the contract's query and a count over the mappings."""
    if rolled_up:
        count, mappings = conn.execute(select(func.count(), func.coalesce(func.sum(system_rollup.c.mappings), 0))
                                       .where(system_rollup.c.customer == customer)).one()
        return int(count), int(mappings)
    from pmp_scrapy.storage.commit import coverage_query  # the crawl's module: only for this fallback

    present = select(systems.c.resource_id).where(systems.c.customer == customer)
    if "retired_at" in {c["name"] for c in inspect(conn).get_columns(systems.name)}:
        present = present.where(systems.c.retired_at.is_(None))
    mappings = conn.execute(select(func.count()).select_from(patch_system_mapping).where(
        patch_system_mapping.c.resource_id.in_(present))).scalar_one()
    return int(conn.execute(coverage_query(customer)).scalar_one()), int(mappings)


def _customer_status(conn: Connection, customer: str, tables: set[str], rolled_up: bool) -> CustomerStatus:
    status = CustomerStatus(customer=customer)
    if patch_system_mapping.name in tables and (not customer or systems.name in tables):
        status.systems_with_mappings, status.mappings = _coverage(conn, customer, rolled_up)
        if "retired_at" in {c["name"] for c in inspect(conn).get_columns(systems.name)}:
            status.retired_systems = int(conn.execute(select(func.count()).select_from(systems).where(
                systems.c.customer == customer, systems.c.retired_at.is_not(None))).scalar_one())
    if snapshots.name in tables:
        def latest(column: Any) -> Any:
            return conn.execute(select(column).where(snapshots.c.customer == customer, column.is_not(None))
                                .order_by(snapshots.c.snapshot_id.desc()).limit(1)).scalar()

        status.managed_total = latest(snapshots.c.managed_total)
        status.last_complete_at = _when(conn.execute(select(func.max(snapshots.c.completed_at)).where(
            snapshots.c.customer == customer, snapshots.c.state == "complete")).scalar())
        status.dcapi_total = latest(snapshots.c.total_records)
        snap = conn.execute(select(snapshots).where(snapshots.c.customer == customer)
                            .order_by(snapshots.c.snapshot_id.desc()).limit(1)).mappings().first()
        if snap is not None:
            status.snapshot = _row(snap, ("snapshot_id", "state", "page_limit", "total_pages", "total_records",
                                          "started_at", "completed_at"))
            _snapshot_details(conn, status, int(snap["snapshot_id"]), tables)
    if runs.name in tables:
        run = conn.execute(select(runs).where(runs.c.customer == customer)
                           .order_by(runs.c.run_id.desc()).limit(1)).mappings().first()
        if run is not None:
            status.last_run = _row(run, ("run_id", "snapshot_id", "started_at", "finished_at", "close_reason",
                                         "exit_code", "pages_committed", "gaps_opened", "gaps_resolved",
                                         "mappings_upserted", "systems_with_mappings", "coverage_pct", "message"))
    return status


def _snapshot_details(conn: Connection, status: CustomerStatus, snapshot_id: int, tables: set[str]) -> None:
    if checkpoints.name in tables:
        point = conn.execute(select(checkpoints).where(checkpoints.c.snapshot_id == snapshot_id)).mappings().first()
        if point is not None:
            status.checkpoint = _row(point, ("last_page", "systems_extracted", "patches_extracted",
                                             "coverage_pct", "updated_at"))
    if gaps.name not in tables:
        return
    has_state = gap_state.name in tables
    columns = [gaps.c.page_num, gaps.c.error_type, gaps.c.attempts, gaps.c.error_message]
    source: Any = gaps
    if has_state:
        columns += [gap_state.c.http_status, gap_state.c.runs_attempted, gap_state.c.last_attempt_at,
                    gap_state.c.resolved_at]
        source = gaps.outerjoin(gap_state, and_(gap_state.c.snapshot_id == gaps.c.snapshot_id,
                                                gap_state.c.page_num == gaps.c.page_num))
    for row in conn.execute(select(*columns).select_from(source).where(gaps.c.snapshot_id == snapshot_id)
                            .order_by(gaps.c.page_num)):
        values = list(row) + [None] * (8 - len(row))
        gap = GapStatus(page=int(values[0]), error_type=values[1], attempts=int(values[2]),
                        last_error=values[3], http_status=values[4], runs_attempted=values[5],
                        last_attempt_at=_when(values[6]), resolved_at=_when(values[7]))
        (status.resolved_gaps if gap.resolved_at else status.open_gaps).append(gap)


def read_status(url: str, customer: str | None = None, *, busy_timeout: float = 15.0) -> list[CustomerStatus]:
    """The status of ``customer`` (every customer when ``None``) from the database at ``url``.

    Raises :class:`StorageError` when there is no database (it is never created) and
    :class:`NoExtractionData` when it holds none of the extractor's tables."""
    engine = open_engine(url, busy_timeout=busy_timeout, create=False)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if not tables & {patch_system_mapping.name, snapshots.name, runs.name}:
                raise NoExtractionData(f"the database {safe_url(url)} holds no extraction data yet")
            names = [customer or ""] if customer is not None else _customers(conn, tables)
            rolled_up = is_current(conn, tables)
            return [_customer_status(conn, name, tables, rolled_up) for name in names]
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read {safe_url(url)}: {describe_error(exc)}") from None
    finally:
        engine.dispose()
        path = sqlite_path(url)
        if path is not None:
            make_private(path, known_sqlite=True)  # never opened: a crawl may hold the file
