"""Pace: the rate limit kept busy at any latency and never exceeded (issue 15).

- the download handler: a request on a reused connection that the server closed is never
  re-sent silently (a local server of this module that drops every second request of a
  connection);
- ``pmp_scrapy.pacing``: the pure decisions (in-flight target, backoff, recovery), in ms;
- the ``Pacer`` extension built with ``get_crawler`` and fed signals, no crawl;
- real crawls against the simulator with latency, arrivals counted as the server saw them.

Components are enabled here through settings overrides, so the tests run before settings.py
registers them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from conftest import crawl_settings, expected_table, mapping_table, max_requests_in_window, oauth_env, run_crawl
from scrapy import Request, signals
from scrapy.core.downloader import Slot
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.core.engine import ExecutionEngine
from scrapy.exceptions import DownloadFailedError
from scrapy.http import Response
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from pmp_scrapy import pacing
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.extensions.pacer import Pacer, pace_limits
from pmp_scrapy.http import NoSilentRetryDownloadHandler
from pmp_scrapy.simulator import DatasetSpec, Fault, RecordedRequest, Scenario, Simulator
from pmp_scrapy.simulator.api import PMP_KINDS  # every request to the PMP host counts

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

HANDLER = "pmp_scrapy.http.NoSilentRetryDownloadHandler"
HANDLERS = {"http": HANDLER, "https": HANDLER}


# --- the download handler ---------------------------------------------------------------------------

@dataclass
class DroppingServer:
    """Answers the first request of each connection (keep-alive) and closes the connection
    after reading any later one, without answering: a server dropping a reused connection.
    ``arrivals`` records (connection number, request number on it) as requests are read."""

    arrivals: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        connection = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            connection += 1
            threading.Thread(target=self._serve, args=(conn, connection), daemon=True).start()

    def _serve(self, conn: socket.socket, connection: int) -> None:
        with conn:
            buffer, served = b"", 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                served += 1
                with self._lock:
                    self.arrivals.append((connection, served))
                if served > 1:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}")

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def dropping_server() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


async def second_request_on_a_reused_connection(
        handler_class: type[HTTP11DownloadHandler], server: DroppingServer) -> BaseException | None:
    """Download twice through one handler; the second goes out on the pooled connection."""
    handler = handler_class(get_crawler(settings_dict={"DOWNLOAD_HANDLERS": HANDLERS}))
    try:
        first = await handler.download_request(Request(server.url))
        assert first.status == 200
        try:
            await handler.download_request(Request(server.url))
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc
        return None
    finally:
        await handler.close()


@deferred_f_from_coro_f
async def test_a_dropped_reused_connection_fails_once_without_a_silent_resend(
        dropping_server: DroppingServer) -> None:
    error = await second_request_on_a_reused_connection(NoSilentRetryDownloadHandler, dropping_server)
    assert isinstance(error, DownloadFailedError), error  # retried by the retry policy
    assert dropping_server.arrivals == [(1, 1), (1, 2)]  # one arrival for the second request


@deferred_f_from_coro_f
async def test_scrapys_stock_handler_resends_silently(dropping_server: DroppingServer) -> None:
    """Why the handler exists: Twisted re-sends the dropped request on a new connection."""
    error = await second_request_on_a_reused_connection(HTTP11DownloadHandler, dropping_server)
    assert error is None  # the re-sent copy was answered, and nobody counted it
    assert dropping_server.arrivals == [(1, 1), (1, 2), (2, 1)]  # two arrivals for one request


@pytest.mark.parametrize(("settings", "kept"), [
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 2}, 16),
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 2, "PMP_MAX_IN_FLIGHT": 6}, 6),
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 8, "PMP_MAX_IN_FLIGHT": 6}, 8)])
def test_the_pool_keeps_a_connection_for_each_request_the_pacer_allows(settings: dict[str, Any], kept: int) -> None:
    handler = NoSilentRetryDownloadHandler(get_crawler(settings_dict=settings))
    assert handler._pool.maxPersistentPerHost == kept


# --- pure decisions (pmp_scrapy.pacing) -------------------------------------------------------------

LIMITS = pacing.PaceLimits(base_delay=0.26, max_delay=8.0, max_in_flight=16)


def test_the_spacing_keeps_a_margin_over_the_limit() -> None:
    assert pacing.paced_delay(0.25, 0.04) == pytest.approx(0.26)
    assert 4 * pacing.paced_delay(0.25, 0.04) > 1.0  # five starts never fit in one second


@pytest.mark.parametrize(("latency", "delay", "expected"), [
    (None, 0.26, 16),  # nothing known yet: the delay alone paces
    (0.0, 0.26, 1),
    (0.3, 0.26, 3),  # ceil(1.15) + 1
    (2.5, 0.26, 11),  # ceil(9.6) + 1: enough to keep 3.85 starts a second at 2.5 s a page
    (2.5, 0.52, 6),  # backed off: fewer requests wait at an overloaded server
    (30.0, 0.26, 16),  # the memory cap
    (2.5, 0.0, 16),
])
def test_in_flight_target_follows_latency_times_rate(latency: float | None, delay: float, expected: int) -> None:
    assert pacing.in_flight_target(latency, delay, 16) == expected


def feed(samples: list[float], latency: pacing.Latency | None = None) -> pacing.Latency:
    for sample in samples:
        latency = pacing.observe_latency(latency, sample)
    assert latency is not None
    return latency


def test_the_latency_peak_rises_at_once_and_falls_slowly() -> None:
    risen = feed([0.001, 2.5])  # a fast inventory answer, then a slow page
    assert risen.peak == 2.5
    fallen = feed([0.3], risen)
    assert fallen.peak == pytest.approx(2.28)


def test_a_slow_server_is_no_climb_at_any_level() -> None:
    for level in (0.3, 2.5, 10.0):
        jittered = [level * (1 + 0.5 * ((k * 7) % 5 - 2) / 2) for k in range(60)]  # ±50 %
        latency = None
        for sample in jittered:
            latency = pacing.observe_latency(latency, sample)
            assert not pacing.latency_climbing(latency), (level, latency)


def test_a_sharp_climb_is_overload_and_costs_one_backoff_at_a_new_level() -> None:
    latency = feed([0.001] + [0.3] * 20)  # the inventory answer is warm-up, not the baseline
    assert not pacing.latency_climbing(latency)
    latency = feed([3.0, 3.0], latency)
    assert pacing.latency_climbing(latency)
    latency = pacing.accept_level(latency)
    for _ in range(30):  # PMP stays slow: no further signal
        latency = feed([3.0], latency)
        assert not pacing.latency_climbing(latency)


def test_a_small_relative_climb_at_low_latency_is_noise() -> None:
    latency = feed([0.05] * 10 + [0.4, 0.4])  # 8x, but only 0.35 s more
    assert not pacing.latency_climbing(latency)


@pytest.mark.parametrize(("status", "body", "reason"), [
    (429, b"{}", pacing.RATE_LIMITED),
    (500, b"<html>", pacing.SERVER_ERROR),
    (503, b"", pacing.SERVER_ERROR),
    (200, b"  \r\n<!DOCTYPE html><html>busy</html>", pacing.THROTTLE_PAGE),
    (200, b'{"metadata": {}}', None),
    (200, b"", None),  # empty or truncated: a retry, not a throttle sign
    (401, b"<html>", None),
    (404, b"{}", None),
])
def test_overload_reasons(status: int, body: bytes, reason: str | None) -> None:
    assert pacing.overload_reason(status, body) == reason


def test_backoff_doubles_once_per_burst_up_to_the_cap() -> None:
    pace = pacing.Pace(0.26)
    pace = pacing.back_off(pace, LIMITS, sent_at=10.0, now=12.0)
    assert (pace.delay, pace.raised_at, pace.backoffs) == (0.52, 12.0, 1)
    # the other requests of the burst left before the raise: no further doubling
    assert pacing.back_off(pace, LIMITS, sent_at=11.9, now=12.1) is pace
    for k in range(10):
        pace = pacing.back_off(pace, LIMITS, sent_at=pace.raised_at + 0.5, now=pace.raised_at + 1)
    assert pace.delay == 8.0 and pace.backoffs == 11


def test_recovery_is_gradual_and_stops_at_the_base() -> None:
    pace = pacing.Pace(2.08, raised_at=100.0, backoffs=3)
    assert pacing.recover(pace, LIMITS, sent_at=99.0) is pace  # sent before the raise
    steps = 0
    while pace.delay > LIMITS.base_delay:
        pace = pacing.recover(pace, LIMITS, sent_at=101.0)
        steps += 1
    assert pace.delay == LIMITS.base_delay and 6 <= steps <= 10
    assert pacing.recover(pace, LIMITS, sent_at=101.0) is pace


def test_slowness_alone_never_raises_the_delay() -> None:
    """What AutoThrottle does wrong: at 2.5 s a page it spaces requests 1.25 s apart."""
    pace, latency = pacing.Pace(LIMITS.base_delay), pacing.observe_latency(None, 0.001)
    for sample in [2.5] * 50:
        latency = pacing.observe_latency(latency, sample)
        if pacing.latency_climbing(latency):
            pace = pacing.back_off(pace, LIMITS, sent_at=0, now=0)
        pace = pacing.recover(pace, LIMITS, sent_at=1)
    assert pace.delay == LIMITS.base_delay
    assert pacing.in_flight_target(latency.peak, pace.delay, 16) == 11


# --- the Pacer extension, fed signals (no crawl) ------------------------------------------------------

PMP = "pmp.example"
PACER = "pmp_scrapy.extensions.pacer.Pacer"


def pacer_crawler(**settings: Any) -> Crawler:
    """A crawler with the Pacer enabled and a real (idle) engine, whose downloader has the PMP
    slot Scrapy would make for CONCURRENT_REQUESTS_PER_DOMAIN = 2 and a jitter of ±50 %."""
    crawler = get_crawler(settings_dict={
        "PMP_BASE_URL": f"https://{PMP}", "PMP_ACCOUNTS_URL": "https://accounts.example",
        "DOWNLOAD_DELAY": 0.25, "AUTOTHROTTLE_ENABLED": False, "CONCURRENT_REQUESTS": 20,
        "EXTENSIONS": {PACER: 500}, **settings})
    crawler.engine = ExecutionEngine(crawler, lambda _spider: None)
    crawler.engine.downloader.slots[PMP] = Slot(concurrency=2, delay=0.25, jitter=0.5)
    return crawler


def reach(crawler: Crawler, **meta: Any) -> Request:
    request = Request(f"https://{PMP}/dcapi/threats/systemreport/patches", meta={"download_slot": PMP, **meta})
    crawler.signals.send_catch_log(signals.request_reached_downloader, request=request, spider=None)
    return request


def answer(crawler: Crawler, status: int = 200, body: bytes = b'{"metadata": {}}', latency: float = 0.3,
           in_flight: int = 1, **meta: Any) -> None:
    request = reach(crawler, **meta)
    request.meta["download_latency"] = latency
    slot = crawler.engine.downloader.slots[request.meta["download_slot"]]
    slot.transferring = {Request(f"https://{PMP}/{k}") for k in range(in_flight)}
    response = Response(request.url, status=status, body=body, request=request)
    crawler.signals.send_catch_log(signals.response_downloaded, response=response, request=request, spider=None)
    slot.transferring = set()


def pmp_slot(crawler: Crawler) -> Slot:
    return crawler.engine.downloader.slots[PMP]


def test_the_pmp_slot_gets_the_spacing_with_margin_and_no_jitter_before_its_first_request() -> None:
    crawler = pacer_crawler()
    reach(crawler)
    slot = pmp_slot(crawler)
    assert (slot.delay, slot.jitter, slot.concurrency) == (pytest.approx(0.26), 0.0, 16)


def test_slow_answers_raise_the_requests_in_flight_not_the_delay() -> None:
    crawler = pacer_crawler()
    answer(crawler, latency=0.001)  # the inventory
    assert pmp_slot(crawler).concurrency == 2
    for k in range(12):
        answer(crawler, latency=2.5, in_flight=min(k + 2, 11))
    slot, stats = pmp_slot(crawler), crawler.stats
    assert (slot.delay, slot.concurrency) == (pytest.approx(0.26), 11)
    assert stats.get_value("pmp/pace/in_flight_target") == 11
    assert stats.get_value("pmp/pace/max_in_flight") == 11
    assert stats.get_value("pmp/pace/latency") == pytest.approx(2.5, abs=0.05)
    assert stats.get_value("pmp/pace/backoffs") is None


def test_the_in_flight_cap_is_a_setting() -> None:
    crawler = pacer_crawler(PMP_MAX_IN_FLIGHT=6)
    answer(crawler, latency=10.0)
    assert pmp_slot(crawler).concurrency == 6


@pytest.mark.parametrize(("status", "body", "reason"), [
    (429, b"{}", "429"), (503, b"<html>", "5xx"), (200, b"\n<html>throttled</html>", "throttle_page")])
def test_overload_backs_off_once_per_burst_then_recovers(status: int, body: bytes, reason: str) -> None:
    crawler = pacer_crawler()
    answer(crawler, status=status, body=body, latency=0.05)
    slot, stats = pmp_slot(crawler), crawler.stats
    assert slot.delay == pytest.approx(0.52)
    answer(crawler, status=status, body=body, latency=5.0)  # left before the raise: same burst
    assert slot.delay == pytest.approx(0.52)
    assert stats.get_value("pmp/pace/backoffs") == 1
    assert stats.get_value(f"pmp/pace/backoffs/{reason}") == 1
    assert stats.get_value("pmp/pace/max_delay") == pytest.approx(0.52)
    for _ in range(4):
        answer(crawler, latency=0.0)
    assert slot.delay == pytest.approx(0.26)  # back at the limit, never under it
    assert stats.get_value("pmp/pace/delay") == pytest.approx(0.26)


def test_a_sharp_latency_climb_backs_off() -> None:
    crawler = pacer_crawler()
    for _ in range(10):
        answer(crawler, latency=0.3)
    answer(crawler, latency=4.0)
    answer(crawler, latency=4.0)
    assert crawler.stats.get_value("pmp/pace/backoffs/latency") == 1
    assert pmp_slot(crawler).delay == pytest.approx(0.52)


def test_side_requests_and_their_slots_are_left_alone() -> None:
    crawler = pacer_crawler()
    accounts = Slot(concurrency=2, delay=0.25, jitter=0.5)
    crawler.engine.downloader.slots["pmp-accounts"] = accounts
    answer(crawler, status=429, latency=3.0, download_slot="pmp-accounts", pmp_side_request=True)
    assert (accounts.delay, accounts.jitter, accounts.concurrency) == (0.25, 0.5, 2)
    assert crawler.stats.get_value("pmp/pace/backoffs") is None


def test_a_slot_scrapy_made_anew_gets_the_current_pace() -> None:
    crawler = pacer_crawler()
    answer(crawler, status=503, latency=0.05)
    crawler.engine.downloader.slots[PMP] = Slot(concurrency=2, delay=0.25, jitter=0.5)  # slot GC
    reach(crawler)
    assert pmp_slot(crawler).delay == pytest.approx(0.52)


def test_no_delay_means_no_pacer() -> None:
    crawler = pacer_crawler(DOWNLOAD_DELAY=0)
    assert crawler.get_extension(Pacer) is None


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PMP_MAX_IN_FLIGHT", "many", "PMP_MAX_IN_FLIGHT must be a positive integer, got 'many'"),
    ("PMP_MAX_IN_FLIGHT", 0, "PMP_MAX_IN_FLIGHT must be a positive integer, got 0"),
    ("PMP_RATE_MARGIN", 2, "PMP_RATE_MARGIN must be a number between 0 and 1, got 2"),
    ("PMP_PACE_MAX_DELAY", 0.1, "PMP_PACE_MAX_DELAY must be a number at least 0.26, got 0.1"),
])
def test_bad_pace_settings_are_named(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pace_limits(Settings({name: value}), 0.25)
    assert str(caught.value) == message


# --- real crawls against the simulator ------------------------------------------------------------------

SMALL = DatasetSpec(managed_systems=300, no_patch_share=0.0)  # 10 pages of 30
STRICT_HTML = {"max_per_second": 4, "reply": "html_200"}
STRICT_429 = {"max_per_second": 4, "reply": "429"}


def paced_settings(sim: Simulator, db_path: Path, **overrides: Any) -> Settings:
    """The project's settings with the pacer and the handler enabled, at the contract's rate;
    CONCURRENT_REQUESTS raised as the pacer needs (settings.py still has 3)."""
    values: dict[str, Any] = {
        "DOWNLOAD_DELAY": 0.25, "AUTOTHROTTLE_ENABLED": False, "PMP_PAGE_LIMIT": 30,
        "PMP_BATCH_PAGES": 0, "CONCURRENT_REQUESTS": 20,
        "DOWNLOAD_HANDLERS": HANDLERS, **overrides}
    settings = crawl_settings(sim, db_path, **values)
    settings.set("EXTENSIONS", {**settings.getdict("EXTENSIONS"), PACER: 500}, priority="cmdline")
    return settings


def pmp_arrivals(sim: Simulator) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.kind in PMP_KINDS]


def most_at_once(records: list[RecordedRequest]) -> int:
    """The most requests the server held at once: overlapping [arrival, answer) intervals."""
    events = []
    for r in records:
        assert r.answered is not None
        events += [(r.t, 1), (r.answered, -1)]
    held = most = 0
    for _, step in sorted(events):  # an answer at the same instant as an arrival ends first
        held += step
        most = max(most, held)
    return most


def assert_paced(records: list[RecordedRequest]) -> None:
    """At most 4 arrivals in any one-second window as the server recorded them, never a
    shorter window."""
    times = [r.t for r in records]
    assert max_requests_in_window(times, window=1.0) <= 4, sorted(b - a for a, b in pairwise(times))


@pytest_twisted.ensureDeferred
async def test_slow_pages_keep_the_rate_busy_and_never_exceed_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2.5 s ± 0.5 s a page behind PMP's strict limiter answering HTML throttle pages: many
    requests at once, no arrival ever refused, no backoff (slow is not overloaded)."""
    scenario = Scenario(dataset=SMALL, latency=2.5, latency_jitter=0.5, rate_limit=STRICT_HTML)
    with Simulator(scenario=scenario) as sim:
        result = await run_crawl(paced_settings(sim, db_path), monkeypatch, env=oauth_env(sim))
        records = pmp_arrivals(sim)
        expected = expected_table(sim)
        refused = sim.rate_limited_count
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected
    pages = [r for r in records if r.kind == "page"]
    assert len(pages) == 10
    assert most_at_once(records) >= 6  # AutoThrottle at 2 in flight held 2
    assert result.stats["pmp/pace/max_in_flight"] >= 6
    assert result.stats["pmp/pace/delay"] == pytest.approx(0.26)
    assert "pmp/pace/backoffs" not in result.stats
    assert refused == 0
    assert_paced(records)
    after_first = [b.t - a.t for a, b in pairwise(pages[1:])]
    assert sorted(after_first)[len(after_first) // 2] >= 0.25  # the pages after page 1 left 0.26 s apart


@pytest_twisted.ensureDeferred
async def test_the_strict_limiter_never_refuses_a_sweep_with_drops_5xx_and_slow_pages(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries go through the paced slot like every other request: even with every fourth
    reused connection dropped, two 5xx and a slow page, no arrival is refused for rate."""
    scenario = Scenario(dataset=SMALL, latency=0.4, latency_jitter=0.3, rate_limit=STRICT_429,
                        drop_reused={"every": 4}, faults=[
                            Fault(page=3, attempts=(1,), kind="http_503"),
                            Fault(page=5, attempts=(1,), kind="http_502"),
                            Fault(page=7, attempts=(1,), kind="slow", delay=2.0)])
    with Simulator(scenario=scenario) as sim:
        settings = paced_settings(sim, db_path, PMP_BACKOFF_BASE=0.2, PMP_MAX_ATTEMPTS=6)  # a drop may
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))  # hit a retry again
        records = pmp_arrivals(sim)
        expected = expected_table(sim)
        refused = sim.rate_limited_count
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected
    assert sum(r.fault == "drop_reused" for r in records) >= 1
    assert refused == 0 and not any(r.fault == "rate_limited" for r in records)
    assert_paced(records)


@pytest_twisted.ensureDeferred
async def test_a_dropped_keep_alive_request_is_retried_by_the_policy_not_resent(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Page 4's first attempt goes out on the connection pages 1-3 used; the server drops it.
    The retry middleware retries it after its backoff (Twisted would re-send it at once)."""
    scenario = Scenario(dataset=SMALL, faults=[Fault(page=4, attempts=(1,), kind="drop")])
    with Simulator(scenario=scenario) as sim:
        settings = paced_settings(sim, db_path, PMP_BACKOFF_BASE=0.5)
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        tries = [r for r in sim.requests if r.kind == "page" and r.page == 4]
        records = pmp_arrivals(sim)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert [r.status for r in tries] == [0, 200]
    assert tries[1].t - tries[0].t >= 0.5
    assert result.stats["retry/count"] == 1
    assert_paced(records)


@pytest_twisted.ensureDeferred
async def test_throttle_pages_and_5xx_back_off_then_the_pace_recovers(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(dataset=DatasetSpec(managed_systems=600, no_patch_share=0.0), latency=0.3, faults=[
        Fault(page=3, attempts=(1,), kind="html_200"), Fault(page=8, attempts=(1,), kind="http_503")])
    with Simulator(scenario=scenario) as sim:
        result = await run_crawl(paced_settings(sim, db_path), monkeypatch, env=oauth_env(sim))
        records = pmp_arrivals(sim)
    stats = result.stats
    assert (stats["pmp/pace/backoffs/throttle_page"], stats["pmp/pace/backoffs/5xx"]) == (1, 1)
    assert 0.52 <= stats["pmp/pace/max_delay"] <= 1.04
    assert stats["pmp/pace/delay"] == pytest.approx(0.26)  # recovered before the last of 20 pages
    assert_paced(records)
