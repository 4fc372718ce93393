"""Pages that stay broken become gaps (spec FR-3, scenario 4) with the contract's error_type,
attempt count and a redacted sample, the run exits 2; the next run of the snapshot retries
them and heals them once the fault is gone. Real crawls against the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    TEN_PAGES,
    CrawlAgainst,
    assert_no_secrets,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    page_attempts,
)
from output_checks import assert_clean_outputs, console_has_no_secret, output_blobs  # noqa: F401 (fixture)

from pmp_scrapy.simulator import Fault, Scenario, Simulator

pytestmark = pytest.mark.crawl_defaults(LOG_LEVEL="DEBUG", DOWNLOAD_TIMEOUT=0.5)
PERSONAL = ["admin@example.com", "10.20.30.40", "2001:db8::1"]  # in every simulated error page


def gap_rows(db_path: Path) -> list[tuple[Any, ...]]:
    return db_rows(db_path, "SELECT g.page_num, g.error_type, g.attempts, g.response_sample, g.error_message, "
                            "s.resolved_at FROM dcapi_extraction_gaps g LEFT JOIN dcapi_gap_state s "
                            "ON s.snapshot_id = g.snapshot_id AND s.page_num = g.page_num ORDER BY g.page_num")


def assert_sample_ok(sample: str | None) -> None:
    if sample is None:
        return
    assert len(sample.encode("utf-8")) <= 1024
    for personal in PERSONAL:
        assert personal not in sample


# (fault, error_type, attempts by the crawler, HTTP status recorded, text the sample must hold)
CASES = {
    "permanent_503": (Fault(page=4, kind="http_503"), "5xx_server_error", 3, 503, "[email]"),
    "permanent_500_on_page_1": (Fault(page=1, kind="http_500"), "5xx_server_error", 3, 500, "[ip]"),
    "permanent_429": (Fault(page=4, kind="http_429"), "429_rate_limit", 3, 429, "Too many requests"),
    # A 200 that is not JSON is retried like a 5xx (PMP's throttle page), then a json_parse_error gap.
    "html_200": (Fault(page=4, kind="html_200"), "json_parse_error", 3, 200, "<html>"),
    "empty_200": (Fault(page=4, kind="empty_200"), "json_parse_error", 3, 200, None),
    "truncated_json": (Fault(page=4, kind="truncated_200"), "json_parse_error", 3, 200, '{"metadata"'),
    "wrong_shape_json": (Fault(page=4, kind="wrong_shape"), "invalid_payload", 1, 200, "systemreport"),
    "http_404": (Fault(page=4, kind="http_status", status=404), "unexpected_status", 1, 404, "Not Found"),
    "http_400": (Fault(page=4, kind="http_status", status=400), "unexpected_status", 1, 400, "Bad Request"),
    "timeout": (Fault(page=4, kind="slow", delay=1.0), "network_timeout", 3, None, None),
    "dropped_connection": (Fault(page=4, kind="drop"), "network_error", 3, None, None),
}


class WrongErrorType(AssertionError):
    """The gap was recorded correctly in every respect but its error_type."""


@pytest.mark.parametrize("case", list(CASES))
@pytest_twisted.ensureDeferred
async def test_broken_page_becomes_a_gap_then_heals(tmp_path: Path, db_path: Path, log_file: Path,
                                                    crawl_against: CrawlAgainst, case: str) -> None:
    fault, error_type, attempts, status, fragment = CASES[case]
    page = fault.page
    assert page is not None
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[fault])) as sim:
        first = await crawl_against(sim, LOG_FILE=log_file)
        seen = page_attempts(sim, page, abandoned=attempts if fault.kind == "slow" else 0)
        expected = expected_table(sim)
        gaps = gap_rows(db_path)
        rows = mapping_table(db_path)

        sim.set_scenario(Scenario(dataset=TEN_PAGES))  # the fault is gone
        sim.reset_requests()
        second = await crawl_against(sim, LOG_FILE=log_file)
        retried = [r.page for r in sim.requests if r.kind == "page"]
        healed = gap_rows(db_path)
        assert_clean_outputs(sim, tmp_path, log_file, personal=PERSONAL)

    # First run: the page is a gap, every other page is stored, exit 2.
    assert first.exit_code == 2, first.stats.get("pmp/exit_message")
    assert "1 page(s) ended as gaps" in first.stats["pmp/exit_message"]
    [(gap_page, gap_type, gap_attempts, sample, message, resolved)] = gaps
    assert (gap_page, gap_attempts, resolved) == (page, attempts, None)
    assert first.stats[f"pmp/gaps/{gap_type}"] == 1
    assert_sample_ok(sample)
    if fragment is not None:
        assert sample and fragment in sample
    else:
        assert not sample
    assert message and all(p not in message for p in PERSONAL)
    # The server saw the attempts the crawler counts (Twisted may re-send a dropped GET once).
    assert len(seen) >= attempts if fault.kind == "drop" else len(seen) == attempts
    lost = {rid for rid, _ in expected} - {rid for rid, _ in rows}
    assert len(lost) == 30 and rows == {k: v for k, v in expected.items() if k[0] not in lost}
    skipped = [r for r in json_log_lines(log_file)
               if r.get("event_type") == "page_extraction_failed" and r.get("action") == "skip_page"]
    assert [(r["level"], r["page"], r["error_type"], r["attempt"], r["http_status"]) for r in skipped] == [
        ("ERROR", page, gap_type, attempts, status)]

    # Second run: only the gap is retried, it heals (resolved, not deleted), the data is whole.
    assert second.exit_code == 0, second.stats.get("pmp/exit_message")
    assert retried == [page]
    [(_, healed_type, _, _, _, resolved_at)] = healed
    assert healed_type == gap_type and resolved_at is not None
    assert second.stats["pmp/gaps_healed"] == 1
    assert mapping_table(db_path) == expected
    # Last, so that everything above is checked for every case.
    if gap_type != error_type:
        raise WrongErrorType(f"page {page} recorded as {gap_type}, want {error_type}")


@pytest_twisted.ensureDeferred
async def test_max_attempts_is_honoured(tmp_path: Path, db_path: Path, log_file: Path,
                                        crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(page=6, kind="http_502")])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_MAX_ATTEMPTS=2)
        seen = page_attempts(sim, 6)
        assert_clean_outputs(sim, tmp_path, log_file, personal=PERSONAL)
    assert result.exit_code == 2
    assert len(seen) == 2
    assert [r[:3] for r in gap_rows(db_path)] == [(6, "5xx_server_error", 2)]


@pytest_twisted.ensureDeferred
async def test_many_broken_pages_do_not_abort_the_sweep(tmp_path: Path, db_path: Path, log_file: Path,
                                                        crawl_against: CrawlAgainst) -> None:
    """No abort threshold: every kind of failure at once, on half the pages; the other half is
    stored and the run still ends normally with exit 2."""
    faults = [Fault(page=2, kind="http_503"), Fault(page=3, kind="html_200"), Fault(page=5, kind="drop"),
              Fault(page=6, kind="wrong_shape"), Fault(page=8, kind="http_status", status=404)]
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=faults)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file, personal=PERSONAL)
    assert result.exit_code == 2 and result.close_reason == "finished"
    assert [r[:2] for r in gap_rows(db_path)] == [(2, "5xx_server_error"), (3, "json_parse_error"),
                                                  (5, "network_error"), (6, "invalid_payload"),
                                                  (8, "unexpected_status")]
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(10,)]
    assert len({rid for rid, _ in mapping_table(db_path)}) == 150
    assert set(mapping_table(db_path).items()) <= set(expected.items())


@pytest_twisted.ensureDeferred
async def test_large_sample_is_cut_to_1kb_and_redacted(tmp_path: Path, db_path: Path, log_file: Path,
                                                       crawl_against: CrawlAgainst) -> None:
    # 4 KB of multi-byte HTML, with addresses throughout and one across the 1 KB mark.
    filler = "<p>Zürich 東京 backend</p>" * 40
    head = ("<html><body>" + filler).encode("utf-8")[:1010].decode("utf-8", "ignore")
    body = (head + " ops.team@example.com 192.168.100.200 fe80::1:2 " + filler * 3
            + "<p>root@example.org 10.0.0.1</p></body></html>")
    fault = Fault(page=3, kind="html_200", body=body)
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[fault])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        assert_clean_outputs(sim, tmp_path, log_file, personal=PERSONAL)
    assert result.exit_code == 2
    [(_, error_type, _, sample, _, _)] = gap_rows(db_path)
    assert error_type == "json_parse_error"
    assert sample.startswith("<html><body><p>Zürich 東京")
    assert len(sample.encode("utf-8")) <= 1024
    for leaked in ("ops.team@example.com", "192.168.100.200", "fe80::1:2", "ops.team", "192.168.", "@example"):
        assert leaked not in sample
    blobs = output_blobs(tmp_path, log_file)
    assert_no_secrets(blobs, ["ops.team@example.com", "192.168.100.200", "root@example.org", "10.0.0.1"])
