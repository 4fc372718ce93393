"""Shifts that totalRecords does not show (pmp_scrapy.storage.shifts), through the store's batch
commit without a crawl, on SQLite and PostgreSQL: a system met on an earlier page of the same
snapshot marks the pages before it to be read again; present systems a complete sweep did not
see are looked for once more, where they were last seen, before they are retired."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_storage import database_url, mapping, postgres_url, system, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.storage import Batch, CheckpointResult, Store
from pmp_scrapy.storage.shifts import READ_AGAIN

TOTAL = 6  # systems in the tenant in every answer: equal totals, so only the ids can tell a shift


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:  # noqa: F811
    s = Store(database_url, busy_timeout=5)
    s.open()
    yield s
    s.close()


def commit_page(store: Store, snapshot: int, page: int, ids: list[str], *, total_pages: int = 3,
                last_page: int | None = None, records: int = TOTAL) -> CheckpointResult:
    """One answered page of two systems per page (one patch each), as the pipeline commits it;
    ``records``: the totalRecords it was answered with."""
    systems = [{**system(rid, 1, page), "total_records": records} for rid in ids]
    batch = Batch(snapshot_id=snapshot, customer="", mappings=[mapping(rid, "7") for rid in ids], systems=systems,
                  last_page=page if last_page is None else last_page, total_pages=total_pages, total_records=records,
                  denominator=TOTAL)
    batch.page_totals[page] = records
    return store.commit_batch(batch)


def sweep(store: Store, pages: list[list[str]]) -> tuple[int, CheckpointResult]:
    snapshot = store.start_snapshot("", 2)
    result = None
    for number, ids in enumerate(pages, start=1):
        result = commit_page(store, snapshot, number, ids, total_pages=len(pages))
    assert result is not None
    return snapshot, result


def page_totals(url: str, snapshot: int) -> dict[int, int]:
    return {int(r[0]): int(r[1]) for r in url_rows(
        url, "SELECT page_num, total_records FROM dcapi_snapshot_pages WHERE snapshot_id = :s", s=snapshot)}


def present(url: str) -> set[str]:
    return {r[0] for r in url_rows(url, "SELECT resource_id FROM dcapi_systems WHERE retired_at IS NULL")}


def test_a_system_met_again_on_a_later_first_read_marks_the_pages_before_it(
        store: Store, database_url: str) -> None:  # noqa: F811
    snapshot = store.start_snapshot("", 2)
    assert commit_page(store, snapshot, 1, ["a", "b"]).seen_twice_at is None
    # Something was added before "b" while the sweep went on: page 2 starts with "b" again.
    result = commit_page(store, snapshot, 2, ["b", "c"])
    assert (result.seen_twice_at, result.reread_pages) == (2, [1])
    assert page_totals(database_url, snapshot) == {1: READ_AGAIN, 2: TOTAL}
    # Page 1 read again (it holds what was added) is a re-read: systems met there again are not a new shift.
    again = commit_page(store, snapshot, 1, ["new", "a"], last_page=2)
    assert again.seen_twice_at is None and again.reread_pages == []
    # The last page completes the snapshot: nothing is left to read again.
    done = commit_page(store, snapshot, 3, ["d", "e"])
    assert done.snapshot_complete and done.reread_pages == []
    assert present(database_url) == {"new", "a", "b", "c", "d", "e"}


def test_present_systems_a_sweep_did_not_see_are_looked_for_before_they_are_retired(
        store: Store, database_url: str) -> None:  # noqa: F811
    sweep(store, [["a", "b"], ["c", "d"], ["e", "f"]])
    # A later sweep while the tenant changes under it: "d", "e" and "f" are not seen where they were.
    snapshot = store.start_snapshot("", 2)
    commit_page(store, snapshot, 1, ["a", "b"])
    commit_page(store, snapshot, 2, ["c", "g"])
    result = commit_page(store, snapshot, 3, ["h"])
    assert result.snapshot_complete is False and result.unseen_systems == 3  # d, e, f
    assert result.reread_pages == [1, 2, 3]  # where they were last seen (2, 3) and the pages either side
    assert url_rows(database_url, "SELECT reconcile_state FROM dcapi_snapshots WHERE snapshot_id = :s",
                    s=snapshot) == [("verifying",)]
    assert present(database_url) >= {"d", "e", "f"}  # nothing retired yet
    # Read again: "e" and "f" are found, "d" is really gone.
    commit_page(store, snapshot, 1, ["a", "b"], last_page=3)
    commit_page(store, snapshot, 2, ["c", "e"], last_page=3)
    final = commit_page(store, snapshot, 3, ["f", "g"], last_page=3)
    assert final.snapshot_complete and final.reread_pages == []
    assert final.reconciliation is not None and final.reconciliation.retired_systems == 1  # d
    assert present(database_url) == {"a", "b", "c", "e", "f", "g", "h"}  # h: seen in this sweep, the next one tells


def test_a_sweep_that_saw_every_system_is_complete_without_reading_again(
        store: Store, database_url: str) -> None:  # noqa: F811
    sweep(store, [["a", "b"], ["c", "d"]])
    snapshot, result = sweep(store, [["a", "b"], ["c", "d"]])
    assert result.snapshot_complete and result.reread_pages == [] and result.unseen_systems == 0
    assert url_rows(database_url, "SELECT reconcile_state FROM dcapi_snapshots WHERE snapshot_id = :s",
                    s=snapshot) == [("reconciled",)]


def test_an_answer_from_before_a_change_arriving_late_does_not_retire_what_a_later_answer_saw(
        store: Store, database_url: str) -> None:  # noqa: F811
    sweep(store, [["a", "b"], ["c", "d"], ["e", "f"]])
    snapshot = store.start_snapshot("", 2)
    # Two systems were added at the front after page 1 was read: "d" moved from page 2 to page 3,
    # and page 3 (the new state, 8 systems) is answered before page 2 (the old state, 6) arrives.
    commit_page(store, snapshot, 1, ["a", "b"])
    commit_page(store, snapshot, 3, ["d", "e"], total_pages=4, records=8, last_page=1)
    commit_page(store, snapshot, 2, ["c", "d"], last_page=3)  # the old state, late: "d" last seen in it
    result = commit_page(store, snapshot, 4, ["f"], total_pages=4, records=8)
    assert result.snapshot_complete is False and result.reread_pages == [1, 2]  # answered before the change
    commit_page(store, snapshot, 1, ["x", "y"], total_pages=4, records=8, last_page=4)
    done = commit_page(store, snapshot, 2, ["a", "b"], total_pages=4, records=8, last_page=4)
    # "c" and "d" were last seen in the old state only: their pages and those either side are read once more.
    assert done.snapshot_complete is False and done.unseen_systems == 2 and 3 in done.reread_pages
    for page, ids in ((1, ["x", "y"]), (2, ["a", "b"]), (3, ["c", "d"])):
        final = commit_page(store, snapshot, page, ids, total_pages=4, records=8, last_page=4)
    assert final.snapshot_complete and final.reconciliation is not None
    assert final.reconciliation.retired_systems == 0
    assert present(database_url) == {"a", "b", "c", "d", "e", "f", "x", "y"}
