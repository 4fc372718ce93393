"""The batch-commit transaction: mapping upserts, systems, gaps, healed gaps and the checkpoint
that covers them, written together or not at all (the caller owns the transaction)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Select, func, select, update

from pmp_scrapy.rows import MAPPING_FIELDS, MAPPING_ROW_FIELDS
from pmp_scrapy.storage.batch import Batch, CheckpointResult, ordered_unique
from pmp_scrapy.storage.schema import checkpoints, gap_state, gaps, patch_system_mapping, snapshots, systems

_CHUNK = 500  # rows a statement: SQLAlchemy's parameter copies stay small (NFR-1)


def utcnow() -> datetime:
    """Naive UTC now, as the TIMESTAMP columns store it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def coverage_query(customer: str) -> Select[Any]:
    """Distinct systems with mappings (the contract's query; per customer for MSP tenants)."""
    query = select(func.count(func.distinct(patch_system_mapping.c.resource_id)))
    if customer:
        query = query.where(patch_system_mapping.c.resource_id.in_(
            select(systems.c.resource_id).where(systems.c.customer == customer)))
    return query


def dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_update``) for ``conn``."""
    # Imported on first use: an SQLite run need not carry PostgreSQL's dialect (3 MB, NFR-1).
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert

def commit_batch(conn: Connection, batch: Batch) -> CheckpointResult:
    """Upsert the batch's rows, gaps and healed gaps and move the checkpoint (one transaction:
    the caller's)."""
    upsert = dialect_insert(conn)
    now = utcnow()
    stmt = upsert(patch_system_mapping)
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
        sys_stmt = upsert(systems)
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
        gap_stmt = upsert(gaps).values(
            snapshot_id=batch.snapshot_id, page_num=gap["page_num"], error_type=gap["error_type"],
            error_message=gap["error_message"], response_sample=gap["response_sample"],
            attempts=gap["attempts"], created_at=now)
        conn.execute(gap_stmt.on_conflict_do_update(
            index_elements=["snapshot_id", "page_num"],
            set_={"error_type": gap_stmt.excluded.error_type,
                  "error_message": gap_stmt.excluded.error_message,
                  "response_sample": gap_stmt.excluded.response_sample,
                  "attempts": gaps.c.attempts + gap_stmt.excluded.attempts}))
        state_stmt = upsert(gap_state).values(
            snapshot_id=batch.snapshot_id, page_num=gap["page_num"], http_status=gap.get("http_status"),
            runs_attempted=1, last_attempt_at=now, resolved_at=None)
        conn.execute(state_stmt.on_conflict_do_update(
            index_elements=["snapshot_id", "page_num"],
            set_={"http_status": state_stmt.excluded.http_status,
                  "runs_attempted": gap_state.c.runs_attempted + 1,
                  "last_attempt_at": now, "resolved_at": None}))

    for page in sorted(batch.healed_pages):
        healed = upsert(gap_state).values(
            snapshot_id=batch.snapshot_id, page_num=page, runs_attempted=1,
            last_attempt_at=now, resolved_at=now)
        conn.execute(healed.on_conflict_do_update(
            index_elements=["snapshot_id", "page_num"],
            set_={"resolved_at": now, "last_attempt_at": now,
                  "runs_attempted": gap_state.c.runs_attempted + 1}))

    if batch.total_pages is not None:
        conn.execute(update(snapshots).where(snapshots.c.snapshot_id == batch.snapshot_id)
                     .values(total_pages=batch.total_pages, total_records=batch.total_records))
    return _save_checkpoint(conn, batch, now)

def _save_checkpoint(conn: Connection, batch: Batch, now: datetime) -> CheckpointResult:
    systems_extracted, patches_extracted = conn.execute(
        select(func.count(), func.coalesce(func.sum(systems.c.patch_count), 0)).where(
            systems.c.customer == batch.customer, systems.c.last_seen_snapshot == batch.snapshot_id)
    ).one()
    coverage = int(conn.execute(coverage_query(batch.customer)).scalar_one())
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
        stmt = dialect_insert(conn)(checkpoints).values(snapshot_id=batch.snapshot_id, created_at=now, **values)
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
