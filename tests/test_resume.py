"""Resuming (issue 2): a run killed with SIGKILL resumes after its checkpoint and the checkpoint
never claims a page whose rows are not committed; ``-a reset=1`` starts a new snapshot and keeps
the rows; a checkpoint that cannot be right is replaced by a new snapshot from page 1."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    SEVEN_PAGES,
    CrawlAgainst,
    crawl_env,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    page_requests,
    scrapy_command,
    sigkill_crawl_when,
)
from twisted.internet import reactor, task

from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

ANSWERED_PAGE = re.compile(r"^Crawled \(200\) <GET [^>]*/systemreport/patches\?[^>]*\bpage=(\d+)")


def checkpoint_page(db_path: Path) -> int | None:
    """The newest checkpoint's page, or None while there is none (or no table yet)."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT MAX(last_page) FROM dcapi_extraction_checkpoints").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def claimed_rows_consistent(db_path: Path, system_ids: list[str], counts: list[int]) -> int | None:
    """In one read transaction: the checkpoint's page and whether every system on the pages it
    claims has all its mappings (``counts[p]``: expected mappings on pages 1..p). Returns the
    page (None without a checkpoint); raises AssertionError when the claim is not backed."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5, isolation_level=None)
    except sqlite3.OperationalError:
        return None
    try:
        conn.execute("BEGIN")
        page = conn.execute("SELECT MAX(last_page) FROM dcapi_extraction_checkpoints").fetchone()[0]
        if not page:
            return None
        claimed = system_ids[:page * 30]
        found = conn.execute(
            f"SELECT COUNT(*) FROM patch_system_mapping WHERE resource_id IN ({','.join('?' * len(claimed))})",
            claimed).fetchone()[0]
        conn.execute("COMMIT")
    except sqlite3.OperationalError:  # tables not created yet
        return None
    finally:
        conn.close()
    assert found == counts[page], f"checkpoint at page {page} but {found} of {counts[page]} rows committed"
    return page


def rows_of(table: dict[tuple[str, str], Any], resource_ids: set[str]) -> dict[tuple[str, str], Any]:
    return {key: value for key, value in table.items() if key[0] in resource_ids}


# --- 2. SIGKILL mid-run -----------------------------------------------------------------------------

KILL_AT = 12  # kill once the checkpoint has reached this page (of 107)


def test_sigkill_mid_run_resumes_after_the_checkpoint(db_path: Path) -> None:
    with Simulator(scenario=Scenario()) as sim:
        total_pages = sim.total_pages(30)
        system_ids = sim.dcapi_system_ids()
        expected = expected_table(sim)
        per_system: dict[str, int] = {}
        for rid, _ in expected:
            per_system[rid] = per_system.get(rid, 0) + 1
        counts = [0]
        for page in range(1, total_pages + 1):
            counts.append(counts[-1] + sum(per_system[r] for r in system_ids[(page - 1) * 30:page * 30]))
        env = crawl_env(sim, db_path, DOWNLOAD_DELAY="0.05", PMP_BATCH_PAGES="0", PMP_CHECKPOINT_EVERY="3")
        def far_enough() -> bool:
            page = claimed_rows_consistent(db_path, system_ids, counts)  # checked while it runs
            return page is not None and page >= KILL_AT

        sigkill_crawl_when(env, far_enough, poll=0.02)
        killed_requests = page_requests(sim)

        # What the dead run left: the checkpoint covers only pages whose rows are committed.
        last_page = checkpoint_page(db_path)
        assert last_page is not None and KILL_AT <= last_page < total_pages
        assert max(killed_requests) < total_pages, "the killed run had already asked for every page"
        claimed = set(system_ids[:last_page * 30])
        at_kill = mapping_table(db_path)
        assert rows_of(at_kill, claimed) == rows_of(expected, claimed)
        assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_runs") == [(0,)]  # it never finished

        # A handler thread still answering the dead run may record its request late: count only
        # requests that arrived after this marker.
        sim.reset_requests()
        marker = time.monotonic()
        second = scrapy_command(["crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"],
                                env={**env, "DOWNLOAD_DELAY": "0"}, timeout=120)
        resumed = [r.page for r in sim.requests if r.kind == "page" and r.t > marker]
    assert second.returncode == 0, second.stderr[-2000:]
    # The run resumes after the checkpoint: no page up to it is asked for again, every later page
    # once. (Which of the first burst of requests reaches the server first depends on the order
    # in which they resume after the run's first token; the lowest page is the checkpoint's next.)
    assert resumed[0] > last_page, resumed
    assert min(resumed) == last_page + 1
    assert sorted(resumed) == list(range(last_page + 1, total_pages + 1))
    assert mapping_table(db_path) == expected
    assert db_rows(db_path, "SELECT COUNT(*) FROM patch_system_mapping") == [(len(expected),)]
    [(snapshot_id, state)] = db_rows(db_path, "SELECT snapshot_id, state FROM dcapi_snapshots")
    assert state == "complete"
    assert db_rows(db_path, "SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints") == [
        (snapshot_id, total_pages)]
    assert db_rows(db_path, "SELECT exit_code, pages_committed FROM dcapi_runs") == [(0, total_pages - last_page)]


# --- 3. -a reset=1 --------------------------------------------------------------------------------------

def identity_rows(db_path: Path) -> list[tuple[Any, ...]]:
    return db_rows(db_path, "SELECT mapping_id, resource_id, patch_id, created_at FROM patch_system_mapping "
                            "ORDER BY mapping_id")


@pytest_twisted.ensureDeferred
async def test_reset_after_a_complete_sweep_keeps_rows_and_their_identity(
        db_path: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        first = await crawl_against(sim)
        assert first.exit_code == 0
        before = identity_rows(db_path)
        # An edited row shows that the new sweep refreshes fields in place.
        [(edited_id, rid, pid)] = db_rows(db_path, "SELECT mapping_id, resource_id, patch_id "
                                                   "FROM patch_system_mapping ORDER BY mapping_id LIMIT 1 OFFSET 100")
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE patch_system_mapping SET patch_status = 'Edited', severity = NULL "
                         "WHERE mapping_id = ?", (edited_id,))
        await task.deferLater(reactor, 1.1)  # CURRENT_TIMESTAMP has one-second resolution: a re-insert would show
        sim.reset_requests()
        reset = await crawl_against(sim, reset="1")
        expected = expected_table(sim)
        assert sorted(page_requests(sim)) == list(range(1, 8))
    assert reset.exit_code == 0, reset.stats.get("pmp/exit_message")
    assert reset.stats.get("pmp/snapshot_id") != first.stats.get("pmp/snapshot_id")
    assert identity_rows(db_path) == before  # same count, same mapping_id and created_at
    assert mapping_table(db_path) == expected
    assert mapping_table(db_path)[(rid, pid)] == expected[(rid, pid)]
    snapshots = db_rows(db_path, "SELECT snapshot_id, state FROM dcapi_snapshots ORDER BY snapshot_id")
    assert [state for _, state in snapshots] == ["complete", "complete"]
    new_snapshot = snapshots[1][0]
    assert reset.stats.get("pmp/snapshot_id") == new_snapshot
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints WHERE snapshot_id = ?",
                   (new_snapshot,)) == [(7,)]


@pytest_twisted.ensureDeferred
async def test_reset_mid_sweep_abandons_the_running_snapshot(db_path: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        first = await crawl_against(sim, PMP_BATCH_PAGES=3)
        assert first.exit_code == 0
        sim.reset_requests()
        reset = await crawl_against(sim, PMP_BATCH_PAGES=3, reset="1")
        assert sorted(page_requests(sim)) == [1, 2, 3]
        sim.reset_requests()
        rest = await crawl_against(sim, PMP_BATCH_PAGES=0)
        assert sorted(page_requests(sim)) == [4, 5, 6, 7]
        expected = expected_table(sim)
    assert (reset.exit_code, rest.exit_code) == (0, 0)
    assert db_rows(db_path, "SELECT state FROM dcapi_snapshots ORDER BY snapshot_id") == [("abandoned",), ("complete",)]
    assert mapping_table(db_path) == expected


# --- 9. a checkpoint that cannot be right -------------------------------------------------------------

CORRUPTIONS = {
    "negative page": "UPDATE dcapi_extraction_checkpoints SET last_page = -4",
    "past the last page": "UPDATE dcapi_extraction_checkpoints SET last_page = 12",
    "unknown snapshot": "UPDATE dcapi_extraction_checkpoints SET snapshot_id = 77",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest_twisted.ensureDeferred
async def test_corrupt_checkpoint_starts_a_new_snapshot_from_page_1(
        corruption: str, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        first = await crawl_against(sim, PMP_BATCH_PAGES=3, PMP_CHECKPOINT_EVERY=1)
        assert first.exit_code == 0
        assert db_rows(db_path, "SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints") == [(1, 3)]
        with sqlite3.connect(db_path) as conn:
            conn.execute(CORRUPTIONS[corruption])
        sim.reset_requests()
        second = await crawl_against(sim, PMP_BATCH_PAGES=0, LOG_FILE=log_file)
        requested = page_requests(sim)
        expected = expected_table(sim)
    assert second.exit_code == 0, second.stats.get("pmp/exit_message")
    assert requested[0] == 1 and sorted(requested) == list(range(1, 8))
    new_snapshot = second.stats.get("pmp/snapshot_id")
    assert new_snapshot not in (None, 1, 77)
    assert db_rows(db_path, "SELECT snapshot_id, state FROM dcapi_snapshots ORDER BY snapshot_id") == [
        (1, "abandoned"), (new_snapshot, "complete")]
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints WHERE snapshot_id = ?",
                   (new_snapshot,)) == [(7,)]
    assert mapping_table(db_path) == expected

    warnings = [r for r in json_log_lines(log_file) if r["event_type"] == "checkpoint_invalid"]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING", warnings
    started = [r for r in json_log_lines(log_file) if r["event_type"] == "snapshot_started"]
    assert [r["snapshot_id"] for r in started] == [new_snapshot]


# --- the checkpoint keeps up with what is committed ---------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_pages_enter_batches_in_arrival_order_so_the_checkpoint_keeps_up(
        db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    """Requests one at a time in page order (a delay), no faults: every page joins a batch soon
    after the pages before it, so each checkpoint covers (nearly) the pages committed with it."""
    every, concurrency = 3, 3  # PMP_CHECKPOINT_EVERY; CONCURRENT_REQUESTS (settings.py)
    with Simulator(scenario=Scenario(dataset=DatasetSpec(managed_systems=1200, no_patch_share=0.0))) as sim:
        result = await crawl_against(sim, DOWNLOAD_DELAY=0.02, PMP_CHECKPOINT_EVERY=every, LOG_FILE=log_file,
                                     LOG_LEVEL="DEBUG")
        expected = expected_table(sim)
    assert result.exit_code == 0
    assert mapping_table(db_path) == expected
    answered: list[int] = []  # pages in the order their answers came in (Scrapy's "Crawled (200)" lines)
    order: list[int] = []  # pages in the order they joined a batch
    lag = 0
    for record in json_log_lines(log_file):
        found = ANSWERED_PAGE.search(record.get("message", ""))
        if found:
            answered.append(int(found.group(1)))
        elif record["event_type"] == "extraction_progress":
            order.append(record["page"])
        elif record["event_type"] == "checkpoint_saved" and order:
            lag = max(lag, max(order) - record["last_page"])
    assert sorted(order) == list(range(1, 41))
    # Answers may overtake each other (a slow moment of the server holds one while the requests
    # after it are answered); the pipeline adds no reordering of its own: pages join batches in
    # the order their answers came in.
    assert order == answered, f"joined {order}, answered {answered}"
    in_flight = max(int(result.stats.get("pmp/pace/max_in_flight") or 0), concurrency)
    late = max((max(order[:i]) - page for i, page in enumerate(order) if i), default=0)
    assert lag <= 3 * every + max(in_flight, late), f"the checkpoint lagged {lag} pages behind the batches"
