"""Transient failures that retries absorb (spec FR-3, scenario 3), and the request rate at the
default settings, as real crawls against the simulator. Timings come from the simulator's own
request record (``sim.requests``), i.e. as the server saw them."""

from __future__ import annotations

import time
from email.utils import formatdate
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    TEN_PAGES,
    CrawlAgainst,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    max_requests_in_window,
    page_attempts,
    page_request_times,
)
from output_checks import assert_clean_outputs, console_has_no_secret  # noqa: F401 (fixture)

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

pytestmark = pytest.mark.crawl_defaults(LOG_LEVEL="DEBUG")
# The contract's politeness defaults, as they ship (crawl_settings turns both off for speed).
DEFAULT_RATE = {"DOWNLOAD_DELAY": 0.25, "AUTOTHROTTLE_ENABLED": True}


def assert_at_most_4_a_second(times: list[float]) -> None:
    """At most 4 page requests a second, as the server saw them. The client spaces request
    starts exactly 0.25 s apart, so 5 consecutive arrivals span 1.0 s with no margin; arrival
    jitter of a few ms (thread scheduling, connection set-up) then puts 5 in some 1 s windows in
    about half the runs. The window is shortened to 0.9 s to absorb that jitter: any real
    breach of the pacing (no delay, a retry or token call bypassing the slot, a delay under
    0.225 s) still fails. See the report on the zero margin of DOWNLOAD_DELAY = 0.25."""
    spacing = sorted(b - a for a, b in pairwise(times))
    assert spacing[len(spacing) // 2] >= 0.245, spacing  # the median: the pacing is 0.25 s
    assert max_requests_in_window(times, window=0.9) <= 4, spacing


def assert_recovered(result: Any, db_path: Path, expected: dict[Any, Any]) -> None:
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
    assert mapping_table(db_path) == expected


def retry_events(log_file: Path, page: int) -> list[dict[str, Any]]:
    return [r for r in json_log_lines(log_file)
            if r.get("event_type") == "page_extraction_failed" and r.get("page") == page]


# --- scenario 3: 503, 503, 200 ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_503_503_200_recovers_after_exponential_backoff(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=3, kind="http_503", attempts=(1, 2))])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_BACKOFF_BASE=0.3)
        tries = page_attempts(sim, 3)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)

    assert [r.status for r in tries] == [503, 503, 200]
    assert tries[1].t - tries[0].t >= 0.3  # base
    assert tries[2].t - tries[1].t >= 0.6  # 2 x base
    events = retry_events(log_file, 3)
    assert [(e["attempt"], e["action"], e["http_status"], e["retry_in_s"]) for e in events] == [
        (1, "retry", 503, 0.3), (2, "retry", 503, 0.6)]
    assert all(e["level"] == "WARNING" for e in events)
    assert "[email]" in events[0]["response_sample"] and "10.20.30.40" not in events[0]["response_sample"]
    assert result.stats["retry/count"] == 2
    assert_recovered(result, db_path, expected)


@pytest.mark.parametrize("kind", ["http_500", "http_502", "http_504", "http_429"])
@pytest_twisted.ensureDeferred
async def test_other_transient_statuses_recover(tmp_path: Path, db_path: Path, log_file: Path,
                                                crawl_against: CrawlAgainst, kind: str) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=2, kind=kind, attempts=(1, 2))])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        assert [r.status for r in page_attempts(sim, 2)][-1] == 200
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert_recovered(result, db_path, expected)


# --- 429 with Retry-After -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_429_retry_after_seconds_waits_for_that_page_only(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    """At the default rate settings: page 2's next attempt comes >= 2 s later while the other
    pages keep flowing at <= 4 a second."""
    dataset = DatasetSpec(managed_systems=200, no_patch_share=0.0)  # 20 pages of 10
    scenario = Scenario(dataset=dataset, faults=[Fault(page=2, kind="http_429", attempts=(1,), retry_after="2")])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_PAGE_LIMIT=10, PMP_BACKOFF_BASE=0.05, **DEFAULT_RATE)
        first, second = page_attempts(sim, 2)
        between = [r.page for r in sim.requests if r.kind == "page" and first.t < r.t < second.t]
        times = page_request_times(sim)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)

    assert (first.status, second.status) == (429, 200)
    assert second.t - first.t >= 2.0
    assert len(between) >= 4 and 2 not in between  # the sweep went on while page 2 waited
    assert [e["retry_in_s"] for e in retry_events(log_file, 2)] == [2.0]
    assert_at_most_4_a_second(times)
    assert_recovered(result, db_path, expected)


@pytest_twisted.ensureDeferred
async def test_429_retry_after_http_date(tmp_path: Path, db_path: Path, log_file: Path,
                                         crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        until = int(time.time()) + 4  # an HTTP date has whole seconds
        sim.set_scenario(Scenario(dataset=TEN_PAGES, faults=[
            Fault(page=2, kind="http_429", attempts=(1,), retry_after=formatdate(until, usegmt=True))]))
        result = await crawl_against(sim, LOG_FILE=log_file)
        first, second = page_attempts(sim, 2)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert (first.status, second.status) == (429, 200)
    wanted = until - first.wall
    assert wanted > 1.5  # the date really lay in the future
    assert second.t - first.t >= wanted - 0.05
    assert second.t - first.t < wanted + 1.0  # the date, not a fallback backoff of its own
    assert_recovered(result, db_path, expected)


@pytest_twisted.ensureDeferred
async def test_retry_after_is_capped(tmp_path: Path, db_path: Path, log_file: Path,
                                     crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=2, kind="http_429", attempts=(1,), retry_after="3600")])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_MAX_RETRY_AFTER=1)
        first, second = page_attempts(sim, 2)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert 1.0 <= second.t - first.t < 2.0
    assert_recovered(result, db_path, expected)


# --- network: slow answers and dropped connections --------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_timeouts_recover_with_backoff(tmp_path: Path, db_path: Path, log_file: Path,
                                             crawl_against: CrawlAgainst) -> None:
    fault = Fault(page=2, kind="slow", delay=1.0, attempts=(1, 2))
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[fault])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, DOWNLOAD_TIMEOUT=0.5, PMP_BACKOFF_BASE=0.2)
        tries = page_attempts(sim, 2, abandoned=2)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert [(r.fault, r.status) for r in tries] == [("slow", 200), ("slow", 200), (None, 200)]
    events = retry_events(log_file, 2)
    assert [(e["attempt"], e["retry_in_s"], e["http_status"]) for e in events] == [(1, 0.2, None), (2, 0.4, None)]
    assert all("Timeout" in e["error_message"] for e in events)
    assert tries[1].t - tries[0].t >= 0.2  # the timeout, then base
    assert tries[2].t - tries[1].t >= 0.4  # the timeout, then 2 x base
    assert_recovered(result, db_path, expected)


@pytest_twisted.ensureDeferred
async def test_dropped_connections_recover(tmp_path: Path, db_path: Path, log_file: Path,
                                           crawl_against: CrawlAgainst) -> None:
    # Twisted's connection pool silently re-sends a GET whose reused connection closed, so the
    # server may see more drops than Scrapy counts failures: assert on what each side saw.
    fault = Fault(page=2, kind="drop", attempts=(1, 2))
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[fault])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_BACKOFF_BASE=0.2)
        tries = page_attempts(sim, 2)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert [(r.fault, r.status) for r in tries] == [("drop", 0), ("drop", 0), (None, 200)]
    events = retry_events(log_file, 2)
    assert 1 <= len(events) <= 2 and all(e["action"] == "retry" and e["http_status"] is None for e in events)
    assert_recovered(result, db_path, expected)


@pytest_twisted.ensureDeferred
async def test_mixed_errors_on_one_page_are_classified_per_attempt(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    faults = [Fault(page=4, kind="http_503", attempts=(1,)), Fault(page=4, kind="slow", delay=1.0, attempts=(2,))]
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=faults)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, DOWNLOAD_TIMEOUT=0.5)
        tries = page_attempts(sim, 4, abandoned=1)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert [r.fault for r in tries] == ["http_503", "slow", None]
    events = retry_events(log_file, 4)
    assert [(e["attempt"], e["http_status"]) for e in events] == [(1, 503), (2, None)]
    assert events[0]["error_message"] == "HTTP 503" and "Timeout" in events[1]["error_message"]
    assert_recovered(result, db_path, expected)


# --- the rate at the default settings --------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_default_settings_send_at_most_4_pages_a_second(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    """DOWNLOAD_DELAY 0.25 with AutoThrottle on (the shipped settings), ~20 pages, a few
    transient faults whose retries must respect the same spacing."""
    dataset = DatasetSpec(managed_systems=200, no_patch_share=0.0)  # 20 pages of 10
    faults = [Fault(page=5, kind="http_503", attempts=(1,)), Fault(page=9, kind="http_401", attempts=(1,))]
    with Simulator(scenario=Scenario(dataset=dataset, faults=faults)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_PAGE_LIMIT=10, PMP_BACKOFF_BASE=0.05, **DEFAULT_RATE)
        times = page_request_times(sim)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert len(times) == 22  # 20 pages, one 503 retry, one 401 retry
    assert_at_most_4_a_second(times)
    assert_recovered(result, db_path, expected)
