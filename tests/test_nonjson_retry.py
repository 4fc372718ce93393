"""A 200 whose body is not JSON (PMP's HTML throttle page, an empty body, a truncated one) is
retried with backoff within the run like a 5xx, on every PMP endpoint, up to PMP_MAX_ATTEMPTS;
then it is a ``json_parse_error`` gap. JSON of the wrong shape is ``invalid_payload`` at once
(contract, "Rate and retries"). The check itself, the retry middleware alone, then real crawls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    TEN_PAGES,
    CrawlAgainst,
    component_crawler,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    opened_spider,
    page_attempts,
)
from scrapy import Request
from scrapy.http import Response
from scrapy.utils.defer import deferred_f_from_coro_f

from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.middlewares.retry import NOT_JSON_REASON, BackoffRetryMiddleware, not_json
from pmp_scrapy.simulator import Fault, Scenario, Simulator

pytestmark = pytest.mark.crawl_defaults(LOG_LEVEL="DEBUG")
PAGE = "/dcapi/threats/systemreport/patches?page=3&pageLimit=30"


# --- the check ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "verdict"), [
    (b"", "an empty body"),
    (b" \r\n\t ", "an empty body"),
    (b"<html><body>Too many requests</body></html>", "an HTML page"),
    (b"\n  <!DOCTYPE html><html>", "an HTML page"),
    (b"Rate limit exceeded", "a body that is not JSON"),
    (b'{"metadata": {"page": 3, "totalPages"', "truncated JSON"),
    (b'[{"resource_id": 1}', "truncated JSON"),
    (b'{"a": [1, 2]', "truncated JSON"),  # an object cut after a closing bracket of the wrong kind
    (b"{", "truncated JSON"),
    (b"{}", None),
    (b"[]", None),
    (b' {"message_response": {"systemreport": []}}\r\n', None),
    (b'\xef\xbb\xbf{"metadata": {}}', None),  # a UTF-8 byte-order mark first
    (b'{"response_code": 200, "message_type": "systemreport"}', None),  # the wrong shape: the spider's to say
])
def test_not_json_reads_only_the_ends_of_the_body(body: bytes, verdict: str | None) -> None:
    assert not_json(body) == verdict


# --- the middleware alone -------------------------------------------------------------------------------

RETRY = {"DOWNLOADER_MIDDLEWARES": {"pmp_scrapy.middlewares.retry.BackoffRetryMiddleware": 550},
         "RETRY_TIMES": 2, "PMP_BACKOFF_BASE": 0.01}


def answer(request: Request, body: bytes, status: int = 200) -> Response:
    return Response(request.url, status=status, body=body, request=request)


@deferred_f_from_coro_f
async def test_the_middleware_retries_a_throttle_page_up_to_the_last_attempt_then_hands_it_on() -> None:
    crawler = component_crawler(**RETRY)
    async with opened_spider(crawler):
        middleware = crawler.get_downloader_middleware(BackoffRetryMiddleware)
        assert middleware is not None
        request = Request("http://127.0.0.1:9" + PAGE, meta={"pmp_page": 3})
        html = b"<html><body>Access Denied: too many requests</body></html>"
        first = await middleware.process_response(request, answer(request, html))
        assert isinstance(first, Request) and first.meta["retry_times"] == 1 and first.url == request.url
        second = await middleware.process_response(first, answer(first, b""))
        assert isinstance(second, Request) and second.meta["retry_times"] == 2
        last = answer(second, b'{"metadata": {"page": 3')
        assert await middleware.process_response(second, last) is last  # the spider makes the gap

        # JSON of the wrong shape, a good page, side requests and other statuses pass at once.
        for body, meta, status in ((b'{"error": "wrong shape"}', {}, 200), (b'{"metadata": {}}', {}, 200),
                                   (b"<html>token endpoint</html>", {SIDE_REQUEST: True}, 200),
                                   (b"<html>not found</html>", {}, 404)):
            other = Request("http://127.0.0.1:9" + PAGE, meta=meta)
            response = answer(other, body, status)
            assert await middleware.process_response(other, response) is response
    stats = crawler.stats.get_stats()
    assert stats["retry/count"] == 2 and stats[f"retry/reason_count/{NOT_JSON_REASON}"] == 2
    assert stats["retry/max_reached"] == 1


# --- real crawls ----------------------------------------------------------------------------------------

def retry_events(log_file: Path) -> list[dict[str, Any]]:
    return [r for r in json_log_lines(log_file)
            if r.get("event_type") == "page_extraction_failed" and r.get("action") == "retry"]


def gaps(db_path: Path) -> list[tuple[Any, ...]]:
    return db_rows(db_path, "SELECT page_num, error_type, attempts FROM dcapi_extraction_gaps ORDER BY page_num")


@pytest_twisted.ensureDeferred
async def test_a_throttle_page_followed_by_a_good_one_heals_within_the_run(
        db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    """PMP's HTML throttle page (status 200) once on a page, on the inventory and on the catalog:
    each is asked again after the backoff and the run ends complete, exit 0, without a gap."""
    faults = [Fault(page=3, attempts=(1,), kind="html_200"),
              Fault(endpoint="inventory", attempts=(1,), kind="html_200"),
              Fault(endpoint="catalog", page=1, attempts=(1,), kind="html_200")]
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=faults)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_BACKOFF_BASE=0.3)
        tries = page_attempts(sim, 3)
        inventory = [r for r in sim.requests if r.kind == "inventory"]
        catalog = [r for r in sim.requests if r.kind == "catalog" and r.page == 1]
        expected = expected_table(sim)

    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    for seen in (tries, inventory, catalog):
        assert [(r.status, r.fault) for r in seen] == [(200, "html_200"), (200, None)]
        assert seen[1].t - seen[0].t >= 0.3  # the backoff, not an immediate re-send
    assert gaps(db_path) == []
    assert mapping_table(db_path) == expected
    stats = result.stats
    assert stats[f"retry/reason_count/{NOT_JSON_REASON}"] == 3
    assert stats["pmp/managed_total"] == 300  # the inventory's answer, read on its second attempt
    assert stats["pmp/catalog/state"] == "complete"
    [event] = [e for e in retry_events(log_file) if e["page"] == 3]
    assert (event["level"], event["attempt"], event["http_status"], event["retry_in_s"]) == ("WARNING", 1, 200, 0.3)
    assert event["error_message"] == "HTTP 200 with an HTML page, not JSON"
    assert event["response_sample"].startswith("<html>")


@pytest_twisted.ensureDeferred
async def test_empty_and_truncated_bodies_are_retried_with_exponential_backoff(
        db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    faults = [Fault(page=2, attempts=(1,), kind="empty_200"), Fault(page=2, attempts=(2,), kind="truncated_200"),
              Fault(page=6, attempts=(1,), kind="truncated_200")]
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=faults)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_BACKOFF_BASE=0.2)
        tries = page_attempts(sim, 2)
        expected = expected_table(sim)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert [r.fault for r in tries] == ["empty_200", "truncated_200", None]
    assert tries[1].t - tries[0].t >= 0.2 and tries[2].t - tries[1].t >= 0.4  # base, then 2 x base
    assert sorted((e["page"], e["attempt"], e["error_message"]) for e in retry_events(log_file)) == [
        (2, 1, "HTTP 200 with an empty body, not JSON"), (2, 2, "HTTP 200 with truncated JSON, not JSON"),
        (6, 1, "HTTP 200 with truncated JSON, not JSON")]
    assert gaps(db_path) == []
    assert mapping_table(db_path) == expected


@pytest_twisted.ensureDeferred
async def test_a_page_that_stays_non_json_is_a_json_parse_error_gap_after_pmp_max_attempts(
        db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(page=5, kind="html_200")])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_MAX_ATTEMPTS=4)
        tries = page_attempts(sim, 5)
    assert result.exit_code == 2
    assert [r.fault for r in tries] == ["html_200"] * 4
    assert gaps(db_path) == [(5, "json_parse_error", 4)]
    assert [e["attempt"] for e in retry_events(log_file) if e["page"] == 5] == [1, 2, 3]
    skipped = [r for r in json_log_lines(log_file) if r.get("action") == "skip_page"]
    assert [(r["page"], r["attempt"], r["error_type"]) for r in skipped] == [(5, 4, "json_parse_error")]


@pytest_twisted.ensureDeferred
async def test_json_of_the_wrong_shape_is_an_invalid_payload_gap_without_a_retry(
        db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(page=7, kind="wrong_shape")])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        tries = page_attempts(sim, 7)
    assert result.exit_code == 2
    assert len(tries) == 1
    assert gaps(db_path) == [(7, "invalid_payload", 1)]
    assert "retry/count" not in result.stats
    assert retry_events(log_file) == []
