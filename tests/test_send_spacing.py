"""The spacing as the server sees it (issue 15): Scrapy spaces a slot's requests when it hands
them to the download handler, but a request is written only when the connection pool hands it
a connection; a reactor busy at that moment (a page's answer being parsed, a hundred requests
being queued) delays one request and lets the next crowd it. The project's pool spaces the
hand-overs themselves. Tested pure, as a component on a fake clock, and in a real crawl where
one request is handed over late (what was measured at 2.5 s latency: two requests 0.08 s apart,
then five arrivals in one second and a throttle page)."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from conftest import TEN_PAGES, expected_table, mapping_table, max_requests_in_window, oauth_env, run_crawl
from test_pacing import paced_settings, pmp_arrivals
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock

from pmp_scrapy.http import NoSilentRetryDownloadHandler, SpacedPool, host_of, next_turn
from pmp_scrapy.http_write import flush
from pmp_scrapy.pacing import LAG_DECAY, MAX_LAG_ALLOWANCE, lag_allowance, observe_lag
from pmp_scrapy.simulator import Scenario, Simulator

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response


# --- pure ----------------------------------------------------------------------------------------

def test_a_turn_is_now_or_the_hosts_next_free_turn() -> None:
    assert next_turn(10.0, 9.0, 0.26) == 10.0  # the host's turn has passed: at once
    assert next_turn(10.0, 10.2, 0.26) == 10.2  # the previous request left 0.06 s ago
    assert next_turn(10.0, 12.0, 0.0) == 10.0  # an unpaced host never waits


def test_the_reactor_lag_widens_the_written_spacing_a_quarter_of_its_peak() -> None:
    assert lag_allowance(0.001) == pytest.approx(0.00025)  # an idle machine: nothing to speak of
    assert lag_allowance(0.2) == pytest.approx(0.05)  # a request written 0.2 s late cannot make 5 in 1 s
    assert lag_allowance(3.0) == MAX_LAG_ALLOWANCE
    peak = observe_lag(0.0, 0.2)
    assert peak == 0.2 and observe_lag(peak, 0.001) == pytest.approx(0.2 * LAG_DECAY)  # jumps, then decays


def test_the_host_of_a_pool_key_is_the_slot_name() -> None:
    assert host_of((b"https", b"patch.manageengine.com", 443)) == "patch.manageengine.com"
    assert host_of((b"http", b"127.0.0.1", 8080, None)) == "127.0.0.1"  # Scrapy's agent adds the proxy
    assert host_of(("http-proxy", object())) == ""


# --- the pool on a fake clock ---------------------------------------------------------------------

class FakeProtocol:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def hand_over(pool: SpacedPool, host: str, fired: list[tuple[float, str]], clock: Clock, label: str) -> Any:
    result = pool._in_turn(FakeProtocol(), host)  # type: ignore[arg-type]
    if hasattr(result, "addCallback"):
        result.addCallback(lambda _: fired.append((clock.seconds(), label)))
        return result
    fired.append((clock.seconds(), label))
    return result


def test_hand_overs_to_a_paced_host_are_spaced_in_order_and_others_pass() -> None:
    clock = Clock()
    pool = SpacedPool(clock, lambda host: 0.26 if host == "pmp" else 0.0, clock=clock.seconds)
    fired: list[tuple[float, str]] = []
    for label in ("a", "b", "c"):  # three requests dequeued together (a busy reactor let them pile up)
        hand_over(pool, "pmp", fired, clock, label)
    hand_over(pool, "hooks.slack.com", fired, clock, "slack")
    assert fired == [(0.0, "a"), (0.0, "slack")]
    clock.advance(0.26)
    clock.advance(0.26)
    assert fired == [(0.0, "a"), (0.0, "slack"), (0.26, "b"), (0.52, "c")]
    clock.advance(5.0)  # long idle: the next one goes at once
    hand_over(pool, "pmp", fired, clock, "d")
    assert fired[-1] == (5.52, "d")


def test_a_turn_counts_from_the_real_hand_over_when_the_reactor_wakes_late() -> None:
    clock = Clock()
    pool = SpacedPool(clock, lambda host: 0.26, clock=clock.seconds)
    fired: list[tuple[float, str]] = []
    for label in ("a", "b", "c"):
        hand_over(pool, "pmp", fired, clock, label)
    clock.advance(0.4)  # a busy reactor wakes b (due at 0.26) late, at 0.4
    assert fired == [(0.0, "a"), (0.4, "b")]
    clock.advance(0.2)
    assert fired[-1] == (0.4, "b")  # c is due 0.26 after b really left, not after b was due
    clock.advance(0.06)
    assert fired[-1] == (pytest.approx(0.66), "c")


def test_the_next_turn_counts_from_when_the_request_was_flushed() -> None:
    clock = Clock()
    pool = SpacedPool(clock, lambda host: 0.26, clock=clock.seconds)
    fired: list[tuple[float, str]] = []
    hand_over(pool, "pmp", fired, clock, "a")
    hand_over(pool, "pmp", fired, clock, "b")
    clock.advance(0.1)
    pool.written("pmp")  # a's bytes left 0.1 s after its turn (a write that took that long)
    clock.advance(0.16)
    assert fired == [(0.0, "a")]  # b's own turn came, but a left late: b waits one spacing after a left
    clock.advance(0.1)
    assert fired[-1] == (pytest.approx(0.36), "b")


class _Reactor:
    def addWriter(self, writer: Any) -> None: ...
    def removeWriter(self, writer: Any) -> None: ...


class _Socket(FileDescriptor):
    """A connection whose sends are recorded (what the kernel would take at once)."""

    connected = 1

    def __init__(self) -> None:
        super().__init__(reactor=_Reactor())  # type: ignore[arg-type]
        self.sent: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)


def test_a_written_request_is_flushed_through_the_wrappers_at_once() -> None:
    sock = _Socket()
    tls = SimpleNamespace(transport=sock)  # a TLS wrapper hands its bytes to the connection under it
    sock.write(b"GET /dcapi HTTP/1.1\r\n\r\n")
    assert sock.sent == []  # Twisted would send it at the reactor's next turn
    assert flush(SimpleNamespace(transport=tls))
    assert sock.sent == [b"GET /dcapi HTTP/1.1\r\n\r\n"]
    assert flush(tls) and sock.sent == [b"GET /dcapi HTTP/1.1\r\n\r\n"]  # nothing left: nothing sent twice
    assert not flush(SimpleNamespace(transport=None))  # no socket found: not known to be sent


def test_a_request_cancelled_while_waiting_for_its_turn_writes_nothing() -> None:
    clock = Clock()
    pool = SpacedPool(clock, lambda host: 0.26, clock=clock.seconds)
    pool._in_turn(FakeProtocol(), "pmp")  # type: ignore[arg-type]
    protocol = FakeProtocol()
    waiting = pool._in_turn(protocol, "pmp")  # type: ignore[arg-type]
    waiting.addErrback(lambda failure: None)  # type: ignore[union-attr]
    waiting.cancel()  # type: ignore[union-attr]
    assert protocol.aborted and not clock.getDelayedCalls()


# --- a real crawl with a late hand-over -----------------------------------------------------------------

class LateHandler(NoSilentRetryDownloadHandler):
    """The project's handler, whose download of page 2 starts ``LATE`` seconds after the slot
    dequeued it (what a reactor busy with the first page's answer did): the slot counted page 2's
    spacing from its dequeue and lets page 3 go 0.26 s later, before page 2 is written."""

    LATE = 0.35

    async def download_request(self, request: Request) -> Response:
        if request.meta.get("pmp_page") == 2 and not request.meta.get("retry_times"):
            await asyncio.sleep(self.LATE)
        return await super().download_request(request)


@pytest_twisted.ensureDeferred
async def test_a_late_request_never_lands_next_to_the_following_one(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    late = "test_send_spacing.LateHandler"
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, latency=0.3)) as sim:
        settings = paced_settings(sim, db_path, DOWNLOAD_HANDLERS={"http": late, "https": late})
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        records = pmp_arrivals(sim)
        expected = expected_table(sim)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected
    pages = {r.page: r.t for r in records if r.kind == "page"}
    assert pages[2] - pages[3] >= 0.2  # page 3 went first; without the pool's spacing page 2 followed 0.09 s later
    times = sorted(r.t for r in records)
    assert min(b - a for a, b in pairwise(times)) >= 0.2, [round(b - a, 3) for a, b in pairwise(times)]
    assert max_requests_in_window(times, window=1.0) <= 4
