"""Prompt stops (issue 12, finding 9): SIGTERM or SIGINT during a wait (a 120 s ``Retry-After``,
the Zoho token budget) ends the run within seconds, with the pages fetched committed and the
run recorded, exit 2; two quick signals do the same instead of Scrapy's unclean stop (exit 1,
nothing recorded); a download that hangs does not hold a stop for ``DOWNLOAD_TIMEOUT``.

Real ``scrapy crawl`` processes against the simulator, signalled as systemd or a person at a
terminal would; the Zoho budget wait is a component test on a real opened engine."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    TEN_PAGES,
    component_crawler,
    crawl_env,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    opened_spider,
    page_requests,
    scrapy_command,
    scrapy_env,
)
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.defer import deferred_f_from_coro_f

from pmp_scrapy.extensions.shutdown import FORCE_AFTER, PromptStop, pause, stop_state
from pmp_scrapy.middlewares.auth import TokenMiddleware
from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.token_budget import TokenBudget

SMALL = DatasetSpec(managed_systems=120)  # 4 pages of 30
RETRY_AFTER_PAGE = 3
#: page 3 answers its first attempt with 429 and "Retry-After: 120" (PMP_MAX_RETRY_AFTER is 300)
LONG_RETRY_AFTER = Fault(page=RETRY_AFTER_PAGE, attempts=(1,), kind="http_429", retry_after="120")
SETTINGS = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 10, "PMP_CATALOG_PAGE_LIMIT": 0}


def start_crawl(sim: Simulator, db_path: Path, log_file: Path) -> subprocess.Popen[str]:
    env = crawl_env(sim, db_path, LOG_FILE=log_file, **SETTINGS)
    return subprocess.Popen([sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"], cwd=ROOT,
                            env=scrapy_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_event(log_file: Path, event: str, process: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the crawl ended before {event}: {process.communicate()[1][-2000:]}"
        if log_file.exists():
            for record in json_log_lines(log_file):
                if record.get("event_type") == event:
                    return record
        time.sleep(0.05)
    raise AssertionError(f"no {event} in the log within {timeout} s")


@pytest.fixture
def crawl() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def stopped(process: subprocess.Popen[str], signals: list[signal.Signals], gap: float = 0.1) -> tuple[float, str, str]:
    """Send ``signals`` ``gap`` seconds apart; the seconds until the process exited, its stdout
    and stderr."""
    started = time.monotonic()
    for number, sig in enumerate(signals):
        if number:
            time.sleep(gap)
        process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return time.monotonic() - started, out, err


def systems_of(sim: Simulator, pages: list[int]) -> set[str]:
    ids = sim.dcapi_system_ids()
    return {rid for page in pages for rid in ids[(page - 1) * 30:page * 30]}


def assert_interrupted_and_recorded(db_path: Path, sim: Simulator, err: str, code: int, *, committed: list[int],
                                    checkpoint: int) -> None:
    """Exit 2 with one line; the pages fetched are stored, the checkpoint covers only pages up to
    the first one not fetched, no gap was recorded for a page the stop dropped, the run is
    recorded as interrupted."""
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("pmp_scrapy:")]
    assert lines == [("pmp_scrapy: exit 2: the run was interrupted (shutdown); the next run resumes from the "
                      "checkpoint")], err[-3000:]
    assert "Traceback" not in err
    wanted = systems_of(sim, committed)
    stored = mapping_table(db_path)
    assert {rid for rid, _ in stored} == wanted
    assert stored == {key: value for key, value in expected_table(sim).items() if key[0] in wanted}
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(checkpoint,)]
    assert db_rows(db_path, "SELECT page_num FROM dcapi_extraction_gaps") == []
    assert db_rows(db_path, "SELECT exit_code, close_reason, pages_committed FROM dcapi_runs") == [
        (2, "shutdown", len(committed))]


def assert_resumes(db_path: Path, sim: Simulator, first_missing: int) -> None:
    """The next run asks for the pages the stop left out and completes the sweep."""
    sim.reset_requests()
    result = scrapy_command(["crawl", "dcapi_patches"], env=crawl_env(sim, db_path, **SETTINGS), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert min(page_requests(sim)) == first_missing
    assert mapping_table(db_path) == expected_table(sim)


# --- SIGTERM during a 120 s Retry-After -------------------------------------------------------------

@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["SIGTERM", "two SIGINTs"])
def test_a_signal_during_a_long_retry_after_stops_within_seconds_and_records_the_run(
        signals: list[signal.Signals], db_path: Path, log_file: Path, crawl: list[subprocess.Popen[str]]) -> None:
    """Page 3 is told to come back in 120 s; pages 1, 2 and 4 are fetched meanwhile. A SIGTERM
    (systemd) or two quick SIGINTs (Ctrl-C twice) end the run in seconds: exit 2, pages 1, 2 and
    4 committed, the checkpoint at 2, the run recorded; page 3 is neither stored nor a gap, and
    the next run starts from it."""
    with Simulator(scenario=Scenario(dataset=SMALL, faults=[LONG_RETRY_AFTER])) as sim:
        process = start_crawl(sim, db_path, log_file)
        crawl.append(process)
        waiting = wait_for_event(log_file, "page_extraction_failed", process)
        assert waiting["page"] == RETRY_AFTER_PAGE and waiting["retry_in_s"] == 120.0
        deadline = time.monotonic() + 30  # the other pages are in before the signal
        while {r["page"] for r in json_log_lines(log_file) if r.get("event_type") == "extraction_progress"} != {1, 2, 4}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        took, _, err = stopped(process, signals)
        assert took < 5, f"the stop took {took:.1f} s"
        print(f"{'+'.join(s.name for s in signals)} during a 120 s Retry-After: exit after {took:.1f} s")  # (-s)
        assert_interrupted_and_recorded(db_path, sim, err, process.returncode, committed=[1, 2, 4], checkpoint=2)
        records = json_log_lines(log_file)
        requested = [r["signals"] for r in records if r.get("event_type") == "stop_requested"]
        # The first signal's stop can be over before the second comes (0.1 s later): that one
        # then finds the run recorded and is ignored (settle_signals), the exit code stays 2.
        assert requested == list(range(1, len(signals) + 1)) or (len(signals) == 2 and requested == [1])
        assert not [r for r in records if r.get("event_type") == "stop_forced"] or len(signals) == 2
        [finished] = [r for r in records if r.get("event_type") == "batch_complete"]
        assert finished["level"] == "WARNING" and finished["exit_code"] == 2
        assert_resumes(db_path, sim, RETRY_AFTER_PAGE)


# --- a download that hangs -----------------------------------------------------------------------------

@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGINT]], ids=["one", "two"])
def test_a_download_that_hangs_does_not_hold_the_stop(
        signals: list[signal.Signals], db_path: Path, log_file: Path, crawl: list[subprocess.Popen[str]]) -> None:
    """Page 4 answers only after 60 s (up to DOWNLOAD_TIMEOUT, which Scrapy's close waits for).
    One signal: the pages fetched are committed and the run recorded FORCE_AFTER seconds later;
    a second signal does it at once. Exit 2 either way, never 1."""
    faults = [LONG_RETRY_AFTER, Fault(page=4, attempts=(1,), kind="slow", delay=60)]
    with Simulator(scenario=Scenario(dataset=SMALL, faults=faults)) as sim:
        process = start_crawl(sim, db_path, log_file)
        crawl.append(process)
        wait_for_event(log_file, "page_extraction_failed", process)
        deadline = time.monotonic() + 30
        while {r["page"] for r in json_log_lines(log_file) if r.get("event_type") == "extraction_progress"} != {1, 2}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        took, _, err = stopped(process, signals, gap=0.5)
        print(f"{'+'.join(s.name for s in signals)} with a download hanging: exit after {took:.1f} s")  # (-s)
        limit = FORCE_AFTER + 4 if len(signals) == 1 else 4
        assert took < limit, f"the stop took {took:.1f} s"
        if len(signals) == 1:
            assert took >= FORCE_AFTER - 1  # it did wait for the download, a while
        assert_interrupted_and_recorded(db_path, sim, err, process.returncode, committed=[1, 2], checkpoint=2)
        assert [r for r in json_log_lines(log_file) if r.get("event_type") == "stop_forced"]


# --- the waits themselves ----------------------------------------------------------------------------------

@deferred_f_from_coro_f
async def test_pause_returns_at_once_when_the_run_stops() -> None:
    crawler = component_crawler()
    waiting = asyncio.ensure_future(pause(crawler, 120))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    started = time.monotonic()
    stop_state(crawler).stopping.set()
    assert await waiting is False
    assert time.monotonic() - started < 0.5
    assert await pause(crawler, 120) is False  # and any later wait too
    assert await pause(component_crawler(), 0.01) is True  # a wait that is not cut short says so


TOKEN_MIDDLEWARE = {"DOWNLOADER_MIDDLEWARES": {"pmp_scrapy.middlewares.auth.TokenMiddleware": 590},
                    "EXTENSIONS": {"pmp_scrapy.extensions.shutdown.PromptStop": 150}}


@deferred_f_from_coro_f
async def test_closing_the_spider_ends_a_zoho_budget_wait(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Ten tokens were minted this window: the eleventh would wait ~10 minutes. The spider closing
    (Scrapy's shutdown path: engine.close_spider_async) ends the wait at once; the request is
    dropped (IgnoreRequest), no eleventh token is minted."""
    for name, key in (("PMP_CLIENT_ID", "client_id"), ("PMP_CLIENT_SECRET", "client_secret"),
                      ("PMP_REFRESH_TOKEN", "refresh_token")):
        monkeypatch.setenv(name, DEMO_CREDENTIALS[key])
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        crawler = component_crawler(sim=sim, **TOKEN_MIDDLEWARE)
        async with opened_spider(crawler, reason="shutdown"):
            middleware = crawler.get_downloader_middleware(TokenMiddleware)
            extension = crawler.get_extension(PromptStop)
            assert middleware is not None and extension is not None
            extension.engine_started()  # what engine_started does in a crawl (no signal handler here)
            budget = middleware._budget = TokenBudget()
            for _ in range(10):
                budget.minted(time.monotonic())
            request = Request(sim.url + "/dcapi/threats/systemreport/patches?page=1&pageLimit=30")
            waiting = asyncio.ensure_future(middleware.process_request(request))
            while not [r for r in caplog.records if getattr(r, "event_type", None) == "token_budget_wait"]:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await crawler.engine.close_spider_async(reason="shutdown")
            with pytest.raises(IgnoreRequest, match="the run is stopping"):
                await waiting
            assert time.monotonic() - started < 1
        assert [r for r in sim.requests if r.kind == "token"] == []
    [wait] = [r for r in caplog.records if getattr(r, "event_type", None) == "token_budget_wait"]
    assert wait.wait_s > 500
