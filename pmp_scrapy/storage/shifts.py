"""Shifts that ``totalRecords`` does not show, found inside the batch-commit transaction.

DCAPI pages are positions in a sorted list. ``totalRecords`` changing mid-sweep tells that the
tenant changed (commit.stale_pages); as many systems added as removed between two page reads
leave it equal, and then:

* systems after a removal shift back onto a page already read and are not seen at all: before a
  complete snapshot retires the present systems it did not see in the tenant's final state, the
  pages they were last seen on and those either side are read once more (:func:`verification_pages`);
* systems after an addition shift forward and are seen twice, and the added one may sit on a page
  already read: a system met on an earlier page of the same snapshot, on a page's first read,
  marks every page before this one for another read (:func:`seen_on_earlier_page`).

A page marked for another read keeps :data:`READ_AGAIN` as its totalRecords in
``dcapi_snapshot_pages``, which no answer has, so the snapshot is not complete until it is read
again, in this run or the next one.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, and_, or_, select, update

from pmp_scrapy.storage.schema import snapshot_pages, systems

READ_AGAIN = -1  # totalRecords of a page that must be read again
#: verification reads at most this share of the snapshot's pages (a tenant that lost many
#: systems between sweeps is reconciled without them, its retirement guard still applies)
MAX_VERIFY_SHARE = 0.25
MIN_VERIFY_PAGES = 10  # a small tenant is verified whole: three pages a candidate add up fast


def first_reads(conn: Connection, snapshot_id: int, pages: list[int]) -> set[int]:
    """Those of ``pages`` the snapshot has no answer for yet (reads of a page after the first
    are re-reads: systems met again there moved, they were not added)."""
    if not pages:
        return set()
    sp = snapshot_pages.c
    known = {int(row[0]) for row in conn.execute(
        select(sp.page_num).where(sp.snapshot_id == snapshot_id, sp.page_num.in_(sorted(set(pages)))))}
    return set(pages) - known


def seen_on_earlier_page(conn: Connection, customer: str, snapshot_id: int, page: int, ids: list[str]) -> bool:
    """Whether one of ``ids`` (reported on ``page``) was already reported on an earlier page of
    this snapshot: something was added before it while the sweep went on."""
    if not ids or page <= 1:
        return False
    s = systems.c
    # Looked up by key and filtered here: with the snapshot in the condition, SQLite reads the
    # snapshot's index instead, every system seen so far (7 ms a page at 99,510 systems).
    return any(snap == snapshot_id and last is not None and last < page for snap, last in conn.execute(
        select(s.last_seen_snapshot, s.last_seen_page).where(s.customer == customer,
                                                              s.resource_id.in_(sorted(set(ids))))))


def unseen_in(snapshot_id: int, total_records: int | None) -> ColumnElement[bool]:
    """The condition on ``dcapi_systems`` of a system the snapshot has not reported in the
    tenant's final state: not at all, or only in an answer with another ``totalRecords``."""
    s = systems.c
    stale = or_(s.last_seen_snapshot.is_(None), s.last_seen_snapshot != snapshot_id)
    if total_records is None:
        return stale
    return or_(stale, and_(s.last_seen_records.is_not(None), s.last_seen_records != total_records))


def verification_pages(conn: Connection, customer: str, snapshot_id: int, total_pages: int,
                       total_records: int | None = None) -> tuple[int, list[int]]:
    """``(unseen, pages)``: how many present systems this snapshot has not reported in the
    tenant's final state (not at all, or only in an answer with another ``totalRecords``: an
    answer read before a change can arrive after one read since), and the pages to read again
    before retiring them: where each was last seen and the pages either side (a removal moves
    systems back, an addition forward). No pages when there are none or too many (more than
    :data:`MAX_VERIFY_SHARE` of the snapshot)."""
    s = systems.c
    last_pages = [row[0] for row in conn.execute(select(s.last_seen_page).where(
        s.customer == customer, s.retired_at.is_(None), unseen_in(snapshot_id, total_records)))]
    pages: set[int] = set()
    for last in last_pages:
        if last is not None:
            pages.update(p for p in (int(last) - 1, int(last), int(last) + 1) if 1 <= p <= total_pages)
    if not pages or len(pages) > max(MIN_VERIFY_PAGES, MAX_VERIFY_SHARE * total_pages):
        return len(last_pages), []
    return len(last_pages), sorted(pages)


def mark_read_again(conn: Connection, snapshot_id: int, *, pages: list[int] | None = None,
                    before: int | None = None) -> list[int]:
    """Mark answered pages of the snapshot to be read again (their totalRecords
    :data:`READ_AGAIN`): ``pages``, or every page before ``before``. Returns the pages marked."""
    sp = snapshot_pages.c
    where = [sp.snapshot_id == snapshot_id, sp.total_records != READ_AGAIN]
    if pages is not None:
        if not pages:
            return []
        where.append(sp.page_num.in_(sorted(set(pages))))
    if before is not None:
        where.append(sp.page_num < before)
    marked = sorted(int(row[0]) for row in conn.execute(select(sp.page_num).where(*where)))
    if marked:
        conn.execute(update(snapshot_pages).where(sp.snapshot_id == snapshot_id, sp.page_num.in_(marked))
                     .values(total_records=READ_AGAIN))
    return marked
