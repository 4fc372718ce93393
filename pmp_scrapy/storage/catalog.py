"""The patch catalog's queries: one catalog answer per transaction (the caller's), into
``dcapi_patch_catalog`` (one row per patch), ``dcapi_patch_cves`` (one row per (patch, CVE)),
the catalog's gaps and ``dcapi_snapshots.catalog_state``.

- An answered page upserts its patches (``snapshot_id`` = the snapshot that saw them last),
  replaces their CVE ids, and heals the page's gap if it had one.
- A page that failed after its last attempt is a gap in the seed's ``dcapi_extraction_gaps``
  (and ``dcapi_gap_state``) under ``page_num = -N`` for catalog page N
  (:func:`pmp_scrapy.catalog.gap_page_num`): system-report pages are always >= 1.
- The sweep's last answer sets ``catalog_state``: ``complete`` (no catalog gap open; the
  customer's rows that this snapshot did not see are deleted, unless the catalog moved
  mid-sweep or fewer patches were read than the server counts) or ``partial`` (gaps open; the
  next run of the snapshot retries them). A sweep that never learned the page count leaves it
  NULL, so the next run of the snapshot sweeps the catalog again.
- ``unavailable``: the server has no catalog (404, error 10022); catalog gaps the snapshot
  still had open are closed, as there is nothing left to retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, update

from pmp_scrapy.catalog import CATALOG_ROW_FIELDS, CatalogRows, SweepEnd, gap_page_num
from pmp_scrapy.storage.commit import dialect_insert, utcnow
from pmp_scrapy.storage.schema import gap_state, gaps, patch_catalog, patch_cves, snapshots

_CHUNK = 500  # rows a statement


@dataclass
class CatalogCommit:
    """One catalog answer to write: ``rows`` (an answered page), ``gap`` (a failed page:
    ``error_type``, ``error_message``, ``response_sample``, ``attempts``, ``http_status``) or
    ``unavailable``; ``end`` when it is the last answer of the run's sweep."""

    customer: str
    snapshot_id: int
    page: int  # the catalog page number (>= 1)
    rows: CatalogRows | None = None
    gap: dict[str, Any] | None = None
    unavailable: bool = False
    end: SweepEnd | None = None


@dataclass
class CatalogResult:
    """What a catalog commit changed."""

    patches: int = 0
    cves: int = 0
    healed: bool = False
    state: str | None = None  # the catalog_state this commit wrote (None: unchanged)
    open_gaps: int = 0  # catalog gaps of the snapshot still open after it (set with ``end``)
    closed_gaps: int = 0  # open catalog gaps closed because the server has no catalog
    pruned: int = 0  # patches deleted because the complete catalog no longer lists them
    prune_skipped: str | None = None  # why stale patches were kept


def commit_catalog(conn: Connection, commit: CatalogCommit) -> CatalogResult:
    """Write one catalog answer (see the module docstring) in the caller's transaction."""
    result = CatalogResult()
    if commit.unavailable:
        result.closed_gaps = _close_open_gaps(conn, commit.snapshot_id)
        _set_state(conn, commit.snapshot_id, "unavailable")
        result.state = "unavailable"
        return result
    if commit.gap is not None:
        _record_gap(conn, commit.snapshot_id, commit.page, commit.gap)
    elif commit.rows is not None:
        result.patches, result.cves = _write_rows(conn, commit.customer, commit.snapshot_id, commit.rows)
        result.healed = _heal(conn, commit.snapshot_id, commit.page)
    if commit.end is not None:
        _finish(conn, commit, result)
    return result


# --- rows ---------------------------------------------------------------------------------------------

def _write_rows(conn: Connection, customer: str, snapshot_id: int, rows: CatalogRows) -> tuple[int, int]:
    upsert = dialect_insert(conn)
    now = utcnow()
    stmt = upsert(patch_catalog)
    stmt = stmt.on_conflict_do_update(
        index_elements=["customer", "patch_id"],
        set_={name: stmt.excluded[name] for name in (*CATALOG_ROW_FIELDS[1:], "snapshot_id", "updated_at")})
    values = [{"customer": customer, **dict(zip(CATALOG_ROW_FIELDS, row)), "snapshot_id": snapshot_id,
               "updated_at": now} for row in rows.patches]
    ids = [row[0] for row in rows.patches]
    for start in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[start:start + _CHUNK])
    # A patch's CVE ids are what its latest entry says: the old ones go, the new ones come.
    for start in range(0, len(ids), _CHUNK):
        conn.execute(delete(patch_cves).where(patch_cves.c.customer == customer,
                                              patch_cves.c.patch_id.in_(ids[start:start + _CHUNK])))
    cve_stmt = upsert(patch_cves).on_conflict_do_nothing(index_elements=["customer", "patch_id", "cve_id"])
    pairs = [{"customer": customer, "patch_id": patch_id, "cve_id": cve} for patch_id, cve in rows.cves]
    for start in range(0, len(pairs), _CHUNK):
        conn.execute(cve_stmt, pairs[start:start + _CHUNK])
    return len(values), len(pairs)


# --- gaps ---------------------------------------------------------------------------------------------

def _open_gap_query(snapshot_id: int) -> Any:
    source = gaps.outerjoin(gap_state, and_(gap_state.c.snapshot_id == gaps.c.snapshot_id,
                                            gap_state.c.page_num == gaps.c.page_num))
    return (select(gaps.c.page_num).select_from(source)
            .where(gaps.c.snapshot_id == snapshot_id, gaps.c.page_num < 0, gap_state.c.resolved_at.is_(None)))


def _record_gap(conn: Connection, snapshot_id: int, page: int, gap: dict[str, Any]) -> None:
    upsert = dialect_insert(conn)
    now = utcnow()
    page_num = gap_page_num(page)
    stmt = upsert(gaps).values(
        snapshot_id=snapshot_id, page_num=page_num, error_type=gap["error_type"],
        error_message=gap.get("error_message"), response_sample=gap.get("response_sample"),
        attempts=gap["attempts"], created_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["snapshot_id", "page_num"],
        set_={"error_type": stmt.excluded.error_type, "error_message": stmt.excluded.error_message,
              "response_sample": stmt.excluded.response_sample,
              "attempts": gaps.c.attempts + stmt.excluded.attempts}))
    state = upsert(gap_state).values(
        snapshot_id=snapshot_id, page_num=page_num, http_status=gap.get("http_status"),
        runs_attempted=1, last_attempt_at=now, resolved_at=None)
    conn.execute(state.on_conflict_do_update(
        index_elements=["snapshot_id", "page_num"],
        set_={"http_status": state.excluded.http_status, "runs_attempted": gap_state.c.runs_attempted + 1,
              "last_attempt_at": now, "resolved_at": None}))


def _resolve(conn: Connection, snapshot_id: int, page_nums: list[int]) -> None:
    upsert = dialect_insert(conn)
    now = utcnow()
    for page_num in page_nums:
        stmt = upsert(gap_state).values(snapshot_id=snapshot_id, page_num=page_num, runs_attempted=1,
                                        last_attempt_at=now, resolved_at=now)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["snapshot_id", "page_num"],
            set_={"resolved_at": now, "last_attempt_at": now, "runs_attempted": gap_state.c.runs_attempted + 1}))


def _heal(conn: Connection, snapshot_id: int, page: int) -> bool:
    """Mark the page's open gap resolved (kept, not deleted: the history stays)."""
    page_num = gap_page_num(page)
    if conn.execute(_open_gap_query(snapshot_id).where(gaps.c.page_num == page_num)).first() is None:
        return False
    _resolve(conn, snapshot_id, [page_num])
    return True


def _close_open_gaps(conn: Connection, snapshot_id: int) -> int:
    open_pages = [int(row[0]) for row in conn.execute(_open_gap_query(snapshot_id))]
    _resolve(conn, snapshot_id, open_pages)
    return len(open_pages)


# --- the end of a sweep -----------------------------------------------------------------------------------

def _set_state(conn: Connection, snapshot_id: int, state: str) -> None:
    conn.execute(update(snapshots).where(snapshots.c.snapshot_id == snapshot_id).values(catalog_state=state))


def _finish(conn: Connection, commit: CatalogCommit, result: CatalogResult) -> None:
    end = commit.end
    assert end is not None
    result.open_gaps = len(conn.execute(_open_gap_query(commit.snapshot_id)).all())
    if not end.listing_complete:
        return  # the page count was never learned: the next run sweeps the catalog again
    result.state = "partial" if result.open_gaps else "complete"
    _set_state(conn, commit.snapshot_id, result.state)
    if result.state == "complete":
        result.pruned, result.prune_skipped = _prune(conn, commit.customer, commit.snapshot_id, end)


def _prune(conn: Connection, customer: str, snapshot_id: int, end: SweepEnd) -> tuple[int, str | None]:
    """Delete the customer's patches the snapshot's complete catalog did not list (the catalog
    is a picture of the present), unless the listing cannot be trusted to be whole."""
    if end.records_changed:
        return 0, "the catalog changed while it was read (totalRecords differed between pages)"
    c = patch_catalog.c
    if end.total_records is not None:
        seen = int(conn.execute(select(func.count()).select_from(patch_catalog).where(
            c.customer == customer, c.snapshot_id == snapshot_id)).scalar_one())
        if seen + end.skipped < end.total_records:
            return 0, f"only {seen} of the {end.total_records} patches the server counts were read"
    stale = select(c.patch_id).where(c.customer == customer,
                                     or_(c.snapshot_id.is_(None), c.snapshot_id != snapshot_id))
    conn.execute(delete(patch_cves).where(patch_cves.c.customer == customer, patch_cves.c.patch_id.in_(stale)))
    pruned = conn.execute(delete(patch_catalog).where(
        c.customer == customer, or_(c.snapshot_id.is_(None), c.snapshot_id != snapshot_id))).rowcount
    return int(pruned or 0), None
