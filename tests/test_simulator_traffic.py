"""How the simulated host treats traffic: latency, the rate limiter, dropped keep-alive
connections, and the arrival/answer times it records. Real HTTP against a real Simulator."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable

import pytest
from test_simulator import PAGES, SMALL, get, token_request

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Fault, RecordedRequest, Scenario, Simulator
from pmp_scrapy.simulator.traffic import LatencyModel, RateLimit, SlidingWindowLimiter

KEY = DEMO_CREDENTIALS["api_key"]
API_PATHS = [f"{PAGES}?page=1&pageLimit=5", "/api/1.4/som/computers?page=1&pagelimit=1",
             "/api/1.4/desktop/customers", "/dcapi/threats/patches?page=1&pageLimit=5"]


def at_once(count: int, request: Callable[[int], object]) -> list[object]:
    """Run ``request(i)`` for i in range(count) in threads released together; their results."""
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = request(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def max_in_flight(records: list[RecordedRequest]) -> int:
    """The most requests that were between arrival and answer at one time."""
    events = sorted([(r.t, 1) for r in records] + [(r.answered or r.t, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def duration(rec: RecordedRequest) -> float:
    assert rec.answered is not None
    return rec.answered - rec.t


def test_latency_is_slept_per_answer_and_concurrent_requests_overlap() -> None:
    with Simulator(Scenario(dataset=SMALL, latency=0.6)) as sim:
        started = time.monotonic()
        statuses = at_once(4, lambda i: get(sim, f"{PAGES}?page={i + 1}")[0])
        elapsed = time.monotonic() - started
        assert statuses == [200] * 4
        assert 0.6 <= elapsed < 1.8  # four 0.6 s answers in parallel, not one after the other (2.4 s)
        records = sim.requests
        assert all(duration(r) >= 0.59 for r in records)
        assert max_in_flight(records) == 4
        assert get(sim, "/api/1.4/desktop/customers")[0] == 200  # every PMP answer has latency
        assert duration(sim.requests[-1]) >= 0.59
        sim.reset_requests()
        token_request(sim)  # Zoho's endpoint has none
        assert duration(sim.requests[-1]) < 0.3


def test_latency_per_system_and_jitter() -> None:
    scenario = Scenario(dataset=SMALL, latency_per_system=0.02)
    with Simulator(scenario) as sim:
        sim.catalog()  # built now, so the request below measures latency only
        get(sim, f"{PAGES}?page=1&pageLimit=30")
        get(sim, f"{PAGES}?page=1&pageLimit=2")
        get(sim, "/dcapi/threats/patches?page=1&pageLimit=300")  # 300 entries: 10 systems' worth
        big, small, catalog = (duration(r) for r in sim.requests)
        assert big >= 0.6 and 0.04 <= small < 0.3 and 0.2 <= catalog < big
    jittery = Scenario(dataset=SMALL, latency=0.15, latency_jitter=0.1)
    with Simulator(jittery, seed=11) as sim:
        for _ in range(6):
            get(sim, f"{PAGES}?page=1")
        durations = [duration(r) for r in sim.requests]
    assert all(0.04 <= d < 0.8 for d in durations) and max(durations) - min(durations) > 0.02
    # the jitter sequence is fixed by the seed
    a, b, c = (LatencyModel(0.15, 0.1, 0.0, seed) for seed in (11, 11, 12))
    first = [a.delay(0) for _ in range(6)]
    assert first == [b.delay(0) for _ in range(6)] != [c.delay(0) for _ in range(6)]
    assert all(0.05 <= d <= 0.25 for d in first)


def limited_by_window(records: list[RecordedRequest], limit: int) -> bool:
    """Whether the limiter kept its word on ``records``: the admitted arrivals never more than
    ``limit`` in any one second, and every refused one had ``limit`` arrivals within a second of
    it. (Arrivals are stamped when their bytes reach the socket and judged when their thread gets
    there, so a burst's refusals are not always its last arrivals in time.)"""
    admitted = sorted(r.t for r in records if r.status != 429)
    if any(b - a < 1.0 for a, b in zip(admitted, admitted[limit:], strict=False)):
        return False
    times = [r.t for r in records]
    return all(sum(1 for s in times if abs(s - r.t) < 1.0) - 1 >= limit for r in records if r.status == 429)


def test_rate_limiter_refuses_the_arrival_over_the_limit_with_429() -> None:
    scenario = Scenario(dataset=SMALL, rate_limit={"max_per_second": 4, "reply": "429"})
    with Simulator(scenario) as sim:
        answers = at_once(10, lambda i: get(sim, API_PATHS[i % 4]))
        statuses = sorted(a[0] for a in answers)  # type: ignore[index]
        assert statuses == [200] * 4 + [429] * 6
        assert all(a[1]["Retry-After"] == "1" for a in answers if a[0] == 429)  # type: ignore[index]
        records = sim.requests
        assert limited_by_window(records, 4)
        assert [r.fault for r in records if r.status == 429] == ["rate_limited"] * 6
        assert sim.rate_limited_count == 6
        # refusals count as arrivals: right after the burst, still refused; a second later, admitted
        assert get(sim, API_PATHS[0])[0] == 429
        time.sleep(1.05)
        assert get(sim, API_PATHS[0])[0] == 200
        records = sim.requests
        assert limited_by_window(records, 4)


def test_rate_limiter_judges_arrivals_handed_in_out_of_order() -> None:
    limiter = SlidingWindowLimiter(RateLimit(4))
    assert [limiter.arrive(t) is None for t in (0.0, 0.26, 0.52, 0.78, 1.04, 1.30)] == [True] * 6  # 0.26 apart: all in
    limiter = SlidingWindowLimiter(RateLimit(4))
    # the first arrival of five in 0.99 s is handled last (its thread got the lock late): it is the one refused
    assert [limiter.arrive(t) is None for t in (0.26, 0.52, 0.78, 0.99, 0.0)] == [True, True, True, True, False]
    assert limiter.refused == 1


def test_an_arrival_is_stamped_when_its_bytes_reach_the_socket_not_when_the_simulator_gets_to_it() -> None:
    """A busy simulator (here: its lock held by the test) reads a request late; its arrival is still
    when the client sent it, so a late read cannot crowd it into the next second's arrivals."""
    with Simulator(Scenario(dataset=SMALL)) as sim:
        connection = http.client.HTTPConnection(sim.host, sim.port, timeout=30)
        with sim._lock:  # every handler thread waits here before it answers
            sent = time.monotonic()
            connection.request("GET", API_PATHS[1], headers={"Authorization": KEY})
            time.sleep(0.3)
            released = time.monotonic()
        assert connection.getresponse().status == 200
        connection.close()
        [record] = sim.requests
    assert sent <= record.t < released  # arrival: before the simulator got to it
    assert record.seen is not None and record.seen >= released


def test_rate_limiter_html_reply_spares_the_token_endpoint() -> None:
    scenario = Scenario(dataset=SMALL, rate_limit={"max_per_second": 1, "reply": "html_200"},
                        faults=[Fault(page=1, attempts=(1,), kind="http_503")])
    with Simulator(scenario) as sim:
        assert all("access_token" in token_request(sim) for _ in range(3))
        assert get(sim, f"{PAGES}?page=1")[0] == 503  # admitted: the fault's first attempt
        status, headers, body = get(sim, f"{PAGES}?page=1")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"exceeded the request limit" in body
        time.sleep(1.05)
        assert get(sim, f"{PAGES}?page=1")[0] == 200  # refusals used no fault attempt
        assert [r.fault for r in sim.requests if r.kind == "page"] == ["http_503", "rate_limited", None]
        assert sim.rate_limited_count == 1


def test_every_nth_request_on_a_reused_connection_is_dropped() -> None:
    scenario = Scenario(dataset=SMALL, drop_reused={"every": 2},
                        faults=[Fault(page=1, attempts=(1,), kind="http_503")])
    with Simulator(scenario) as sim:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(sim.url).netloc, timeout=5)
        headers = {"Authorization": KEY}
        conn.request("GET", f"{PAGES}?page=2", headers=headers)  # fresh connection
        assert conn.getresponse().read()
        conn.request("GET", f"{PAGES}?page=3", headers=headers)  # reused #1
        assert conn.getresponse().read()
        conn.request("GET", f"{PAGES}?page=1", headers=headers)  # reused #2: dropped
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
        conn.close()
        assert get(sim, f"{PAGES}?page=1")[0] == 503  # the dropped request was no attempt
        records = sim.requests
        assert [(r.page, r.status, r.fault) for r in records] == [
            (2, 200, None), (3, 200, None), (None, 0, "drop_reused"), (1, 503, "http_503")]
        assert len({r.connection for r in records[:3]}) == 1 and records[3].connection != records[0].connection
        assert all(r.answered is not None and r.answered >= r.t for r in records)
