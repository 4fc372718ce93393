"""The batch-commit transaction: mapping upserts, systems, gaps, healed gaps and the checkpoint
that covers them, written together or not at all (the caller owns the transaction)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, func, select, update

from pmp_scrapy.storage.batch import Batch, CheckpointResult, Reconciliation, ordered_unique
from pmp_scrapy.storage.history import Changes, Context, apply_page, retire_systems, returned_systems, write_events
from pmp_scrapy.storage.rollup import coverage as rollup_coverage
from pmp_scrapy.storage.rollup import refresh, without_rollup
from pmp_scrapy.storage.schema import (
    checkpoints,
    gap_state,
    gaps,
    patch_system_mapping,
    snapshot_pages,
    snapshots,
    systems,
)
from pmp_scrapy.storage.shifts import (
    first_reads,
    mark_read_again,
    seen_on_earlier_page,
    unseen_in,
    verification_pages,
)
from pmp_scrapy.storage.upserts import dialect_insert as insert_of
from pmp_scrapy.storage.upserts import upsert_rows


def utcnow() -> datetime:
    """Naive UTC now, as the TIMESTAMP columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def coverage_query(customer: str) -> Select[Any]:
    """Distinct systems with mappings (the contract's query), counting only the customer's
    present systems (the default customer '' included: its systems only)."""
    return select(func.count(func.distinct(patch_system_mapping.c.resource_id))).where(
        patch_system_mapping.c.resource_id.in_(
            select(systems.c.resource_id).where(systems.c.customer == customer, systems.c.retired_at.is_(None))))


def dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_update``) for ``conn``."""
    return insert_of(conn.dialect.name)


def commit_batch(conn: Connection, batch: Batch) -> CheckpointResult:
    """Write the batch's pages (mappings with their history, systems), gaps and healed gaps, and
    move the checkpoint; complete and reconcile the snapshot when its last page is in (one
    transaction: the caller's)."""
    upsert = dialect_insert(conn)
    now = utcnow()
    ctx = Context(batch.customer, batch.snapshot_id, now)
    changes = Changes()
    first = first_reads(conn, batch.snapshot_id, list(batch.page_totals))
    shifted_before = 0  # a system met again on a page's first read: every page before it is read again
    wrote_systems = False
    # Page by page, in arrival order: a system that moved between pages during the sweep ends
    # with its later page's patch list.
    for page_rows, page_systems in batch.pages():
        reported = [s["resource_id"] for s in page_systems]
        page = int(page_systems[0]["last_seen_page"]) if page_systems else 0
        if page in first and page > shifted_before and seen_on_earlier_page(
                conn, batch.customer, batch.snapshot_id, page, reported):
            shifted_before = page
        changes.add(page_changes := apply_page(conn, upsert, ctx, list(ordered_unique(page_rows)), reported))
        changes.events.extend(page_changes.events)
        if page_systems:
            _write_systems(conn, ctx, page_systems, changes)
            wrote_systems = True
    write_events(conn, changes.events)
    # After the systems are written: a system new or back from retirement is present by now.
    # Only last_seen_at moved (to now) unless a system came back (its retired_at cleared).
    brought_back = any(event["event"] == "system_returned" for event in changes.events)
    refresh(conn, changes.touched | set(without_rollup(conn, ctx.customer, changes.with_mappings - changes.touched)),
            seen=(ctx.customer, now) if wrote_systems and not brought_back else None)
    _write_page_totals(conn, upsert, batch, now)
    seen_twice = mark_read_again(conn, batch.snapshot_id, before=shifted_before) if shifted_before else []

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
    result = _save_checkpoint(conn, batch, now)
    result.changes = changes
    if seen_twice:
        result.seen_twice_at = shifted_before
        result.reread_pages = sorted(set(result.reread_pages) | set(seen_twice))
    return result


def _write_systems(conn: Connection, ctx: Context, page_systems: list[dict[str, Any]],
                   changes: Changes) -> None:
    by_id = dict(sorted({s["resource_id"]: s for s in page_systems}.items()))
    for resource_id in returned_systems(conn, ctx, list(by_id)):
        changes.events.append({"customer": ctx.customer, "resource_id": resource_id, "patch_id": None,
                               "snapshot_id": ctx.snapshot_id, "observed_at": ctx.now,
                               "event": "system_returned", "old_status": None, "new_status": None})
    upsert_rows(conn, systems, _SYSTEM_FIELDS, [
        (ctx.customer, s["resource_id"], s["resource_name"], s["patch_count"], s["last_seen_page"],
         s.get("total_records"), ctx.snapshot_id, ctx.snapshot_id, ctx.now, None, None)
        for s in by_id.values()
    ], conflict=("customer", "resource_id"), update=_SYSTEM_FIELDS[2:6] + _SYSTEM_FIELDS[7:])


#: the columns a page writes of each system it reports; every one but the key and the first
#: sighting is updated on a system seen before
_SYSTEM_FIELDS = ("customer", "resource_id", "resource_name", "patch_count", "last_seen_page", "last_seen_records",
                  "first_seen_snapshot", "last_seen_snapshot", "last_seen_at", "retired_snapshot", "retired_at")


def _write_page_totals(conn: Connection, upsert: Any, batch: Batch, now: datetime) -> None:
    if not batch.page_totals:
        return
    stmt = upsert(snapshot_pages)
    stmt = stmt.on_conflict_do_update(
        index_elements=["snapshot_id", "page_num"],
        set_={"total_records": stmt.excluded.total_records, "read_at": now,
              "reads": snapshot_pages.c.reads + 1})
    conn.execute(stmt, [{"snapshot_id": batch.snapshot_id, "page_num": page, "total_records": total,
                         "reads": 1, "read_at": now} for page, total in sorted(batch.page_totals.items())])


def stale_pages(conn: Connection, snapshot_id: int, total_pages: int, total_records: int | None) -> list[int]:
    """Pages of the snapshot answered with another totalRecords than the latest: read before
    the tenant changed, so systems may have shifted past them."""
    if total_records is None:
        return []
    sp = snapshot_pages.c
    return [int(r[0]) for r in conn.execute(
        select(sp.page_num).where(sp.snapshot_id == snapshot_id, sp.page_num <= total_pages,
                                  sp.total_records.is_not(None), sp.total_records != total_records)
        .order_by(sp.page_num))]

def _save_checkpoint(conn: Connection, batch: Batch, now: datetime) -> CheckpointResult:
    last_page = batch.last_page
    if last_page is None:
        last_page = conn.execute(select(checkpoints.c.last_page).where(
            checkpoints.c.snapshot_id == batch.snapshot_id)).scalar()
    snap = conn.execute(select(snapshots.c.total_pages, snapshots.c.total_records, snapshots.c.state,
                               snapshots.c.reconcile_state)
                        .where(snapshots.c.snapshot_id == batch.snapshot_id)).one_or_none()
    total = batch.total_pages if batch.total_pages is not None else (snap[0] if snap else None)
    records = batch.total_records if batch.total_records is not None else (snap[1] if snap else None)
    complete = snap is not None and snap[2] == "complete"
    reread: list[int] = []
    unseen = 0
    if last_page is not None and total is not None and last_page >= total and not complete:
        reread = stale_pages(conn, batch.snapshot_id, total, records)
        if not reread and snap is not None and snap[3] is None and not _open_gaps(conn, batch.snapshot_id):
            # Before retiring what this snapshot did not see, look where it was once more.
            unseen, verify = verification_pages(conn, batch.customer, batch.snapshot_id, total, records)
            reread = mark_read_again(conn, batch.snapshot_id, pages=verify)
            if reread:
                conn.execute(update(snapshots).where(snapshots.c.snapshot_id == batch.snapshot_id)
                             .values(reconcile_state="verifying"))
        if not reread:
            complete = True
            conn.execute(update(snapshots).where(
                snapshots.c.snapshot_id == batch.snapshot_id, snapshots.c.state == "running"
            ).values(state="complete", completed_at=now))
    reconciliation = None
    if complete and snap is not None and snap[3] in (None, "verifying") and not _open_gaps(conn, batch.snapshot_id):
        reconciliation = reconcile(conn, dialect_insert(conn), Context(batch.customer, batch.snapshot_id, now),
                                   records, batch.max_retire_share)
    systems_extracted, patches_extracted = conn.execute(
        select(func.count(), func.coalesce(func.sum(systems.c.patch_count), 0)).where(
            systems.c.customer == batch.customer, systems.c.last_seen_snapshot == batch.snapshot_id)
    ).one()
    coverage = rollup_coverage(conn, batch.customer)  # coverage_query's count, from ~N roll-up rows
    denominator = batch.denominator or 0
    coverage_pct = round(100.0 * coverage / denominator, 2) if denominator else 0.0
    if last_page is not None:
        values = {"last_page": last_page, "systems_extracted": int(systems_extracted),
                  "patches_extracted": int(patches_extracted), "coverage_pct": coverage_pct,
                  "updated_at": now}
        stmt = dialect_insert(conn)(checkpoints).values(snapshot_id=batch.snapshot_id, created_at=now, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["snapshot_id"], set_=values))
    return CheckpointResult(last_page, int(systems_extracted), int(patches_extracted),
                            coverage, coverage_pct, complete, reread_pages=reread, reconciliation=reconciliation,
                            unseen_systems=unseen if reread else 0)


def _open_gaps(conn: Connection, snapshot_id: int) -> int:
    return int(conn.execute(
        select(func.count()).select_from(gaps.outerjoin(gap_state, and_(
            gap_state.c.snapshot_id == gaps.c.snapshot_id, gap_state.c.page_num == gaps.c.page_num)))
        .where(gaps.c.snapshot_id == snapshot_id, gaps.c.page_num > 0,  # the system report's, not the catalog's
               gap_state.c.resolved_at.is_(None))).scalar_one())


def reconcile(conn: Connection, upsert: Any, ctx: Context, total_records: int | None,
              max_share: float) -> Reconciliation:
    """Retire the present systems a complete, gap-free snapshot did not see in the tenant's final
    state, unless that is more than ``max_share`` of them (a PMP answering with a fraction of the
    tenant): then retire nothing and say why."""
    s = systems.c
    present_now = s.customer == ctx.customer, s.retired_at.is_(None)
    # counted and listed by the database: a tenant of 100,000 systems is not held in memory
    present = int(conn.execute(select(func.count()).where(*present_now)).scalar_one())
    unseen = [row[0] for row in conn.execute(select(s.resource_id).where(
        *present_now, unseen_in(ctx.snapshot_id, total_records)).order_by(s.resource_id))]
    if present and len(unseen) > max_share * present:
        message = (f"snapshot {ctx.snapshot_id} would retire {len(unseen)} of {present} systems "
                   f"({100.0 * len(unseen) / present:.1f}%, more than PMP_MAX_RETIRE_SHARE "
                   f"{max_share:g}); nothing was retired: check that PMP reported the whole tenant")
        result = Reconciliation("refused", 0, 0, present, message)
    else:
        retired_mappings = retire_systems(conn, upsert, ctx, unseen) if unseen else 0
        result = Reconciliation("reconciled", len(unseen), retired_mappings, present - len(unseen))
    conn.execute(update(snapshots).where(snapshots.c.snapshot_id == ctx.snapshot_id).values(
        reconcile_state=result.state, retired_systems=result.retired_systems,
        retired_mappings=result.retired_mappings))
    return result
