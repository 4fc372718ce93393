"""A new snapshot asks for its pages on the previous snapshot's page count (issue 15): at real
latency the first page's answer takes seconds, and waiting for its ``totalPages`` before asking
for page 2 left the rate limit idle that long in every sweep. Pages past the real end (the
tenant shrank) are no data and no gap; pages beyond the expected count (it grew) are asked for
once an answer says so. The plan is tested pure, the sweeps as real paced crawls against the
simulator (what the server received, and what the database holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import db_rows, expected_table, mapping_table, max_requests_in_window, oauth_env, run_crawl
from test_pacing import paced_settings, pmp_arrivals

from pmp_scrapy.plan import PlanDecision, RunState, expected_pages, make_plan
from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

# --- the plan ------------------------------------------------------------------------------------

NEW = PlanDecision("the previous sweep is complete", None, 1, ())


def test_a_new_snapshot_expects_the_previous_page_count_at_its_page_size() -> None:
    previous = RunState(snapshot_id=3, snapshot_state="complete", total_pages=107, total_records=3210, page_limit=30)
    assert expected_pages(previous, 30) == 107
    assert expected_pages(previous, 100) == 33  # another page size: from totalRecords
    assert expected_pages(RunState(), 30) is None  # no snapshot before
    assert expected_pages(RunState(snapshot_id=3, page_limit=30), 30) is None  # it never learnt a count
    plan = make_plan(NEW, previous, 4, 0, 30)
    assert plan.expected_total_pages == 107 and plan.known_total_pages is None  # a guess, not a fact


def test_a_continued_snapshot_keeps_its_known_count_and_expects_nothing() -> None:
    running = RunState(snapshot_id=3, snapshot_state="running", last_page=50, total_pages=107, total_records=3210,
                       page_limit=30)
    plan = make_plan(PlanDecision(None, None, 51, ()), running, 3, 0, 30)
    assert plan.known_total_pages == 107 and plan.expected_total_pages is None
    gaps_only = make_plan(PlanDecision(None, None, None, (7,)), running, 3, 0, 30)
    assert gaps_only.expected_total_pages is None


# --- real sweeps -----------------------------------------------------------------------------------

FIVE_PAGES = DatasetSpec(managed_systems=150, no_patch_share=0.0)  # 5 pages of 30


async def sweep(sim: Simulator, db_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    settings = paced_settings(sim, db_path, LOG_LEVEL="DEBUG", **overrides)
    return await run_crawl(settings, monkeypatch, env=oauth_env(sim), reset="1")


def page_records(sim: Simulator) -> dict[int, list[Any]]:
    pages: dict[int, list[Any]] = {}
    for record in sim.requests:
        if record.kind == "page":
            pages.setdefault(record.page, []).append(record)
    return pages


@pytest_twisted.ensureDeferred
async def test_a_resweep_asks_for_its_pages_before_the_first_answer(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1.5 s a page: the first sweep waits for page 1's count (it has no other); the next
    sweeps pages 2..5 at the pace while page 1's answer is on its way."""
    with Simulator(scenario=Scenario(dataset=FIVE_PAGES, latency=1.5)) as sim:
        first = await sweep(sim, db_path, monkeypatch)
        pages = page_records(sim)
        assert min(r.t for r in pages[2]) >= pages[1][0].answered  # nothing to expect: it waited
        sim.reset_requests()
        second = await sweep(sim, db_path, monkeypatch)
        pages = page_records(sim)
        records = pmp_arrivals(sim)
        expected = expected_table(sim)
    assert first.exit_code == 0 and second.exit_code == 0, second.stats.get("pmp/exit_message")
    assert sorted(pages) == [1, 2, 3, 4, 5] and all(len(tries) == 1 for tries in pages.values())
    assert max(r.t for page in (2, 3, 4, 5) for r in pages[page]) < pages[1][0].answered
    assert second.stats["pmp/pages_expected"] == 4
    assert max_requests_in_window([r.t for r in records], window=1.0) <= 4
    assert mapping_table(db_path) == expected
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_pages_past_a_shrunken_tenants_end_are_no_data_and_no_gap(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """5 pages, then 60 systems removed at the end (3 pages): pages 4 and 5, asked for on the old
    count before page 1 answered, come back empty past the end and are dropped at INFO; the
    snapshot completes at page 3 with exactly the tenant's data and no gap (page 3 read once
    more before the 60 are retired)."""
    with Simulator(scenario=Scenario(dataset=FIVE_PAGES, latency=1.5)) as sim:
        await sweep(sim, db_path, monkeypatch)
        sim.mutate(remove_systems={"count": 60, "where": "end"})
        sim.reset_requests()
        result = await sweep(sim, db_path, monkeypatch, PMP_MAX_RETIRE_SHARE=0.5)
        pages = page_records(sim)
        expected = expected_table(sim)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    # Page 3 twice: before the 60 systems it did not see are retired, the sweep looks once more at the
    # page before where they were (storage.shifts: a removal moves systems back).
    assert {page: len(tries) for page, tries in pages.items()} == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    assert result.stats["pmp/pages_past_the_end"] == 2 and result.stats["pmp/systems_verified"] == 60
    assert mapping_table(db_path) == expected
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
    snapshot = db_rows(db_path, "SELECT MAX(snapshot_id) FROM dcapi_snapshots")[0][0]
    assert db_rows(db_path, "SELECT state, total_pages FROM dcapi_snapshots WHERE snapshot_id = ?", (snapshot,)) == [
        ("complete", 3)]
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints WHERE snapshot_id = ?",
                   (snapshot,)) == [(3,)]
    dropped = [r for r in caplog.records if getattr(r, "event_type", None) == "page_past_the_end"]
    assert sorted(r.page for r in dropped) == [4, 5] and {r.levelname for r in dropped} == {"INFO"}  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_pages_beyond_the_expected_count_are_asked_for_once_an_answer_says_so(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=FIVE_PAGES, latency=0.5)) as sim:
        await sweep(sim, db_path, monkeypatch)
        sim.mutate(add_systems={"count": 60, "where": "end"})
        sim.reset_requests()
        result = await sweep(sim, db_path, monkeypatch)
        pages = page_records(sim)
        expected = expected_table(sim)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert {page: len(tries) for page, tries in pages.items()} == {k: 1 for k in range(1, 8)}
    assert min(r.t for page in (6, 7) for r in pages[page]) >= min(
        r.answered for page in range(1, 6) for r in pages[page])  # asked for once the count was known
    assert mapping_table(db_path) == expected
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]


def test_pages_in_a_log_line_are_the_first_twenty_then_an_ellipsis() -> None:
    from pmp_scrapy.plan import page_list

    assert page_list([4, 5, 6]) == "4, 5, 6"
    assert page_list(list(range(1, 21))) == ", ".join(map(str, range(1, 21)))
    assert page_list(list(range(1, 25))) == ", ".join(map(str, range(1, 21))) + " …"
