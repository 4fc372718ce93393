"""Component tests of a run's life, each without a crawl: the checkpoint extension, the pipeline
and the spider built by Scrapy's test crawler, opened by a real (never started) engine, fed
items and responses directly, against a real Store on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from conftest import component_crawler, db_rows, opened_spider
from scrapy import Request
from scrapy.core.scheduler import Scheduler
from scrapy.exceptions import DropItem
from scrapy.http import TextResponse
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.misc import build_from_crawler
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.python.failure import Failure

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.items import InventoryTotal, PatchPage
from pmp_scrapy.pipelines import MappingPipeline
from pmp_scrapy.plan import RunState, decide
from pmp_scrapy.rows import page_rows
from pmp_scrapy.run import RunRecord, get_run
from pmp_scrapy.spiders.dcapi_patches import INVENTORY_PATH, PAGE_PATH, DcapiPatchesSpider
from pmp_scrapy.storage import Batch, Store

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

#: The checkpoint extension and the pipeline, as settings.py enables them.
RUN_COMPONENTS = {"EXTENSIONS": {"pmp_scrapy.extensions.checkpoint.Checkpoints": 100},
                  "ITEM_PIPELINES": {"pmp_scrapy.pipelines.MappingPipeline": 300}}
SYSTEMS_A_PAGE = 3


def systems_of(page: int) -> list[dict[str, Any]]:
    """Three systems with two patches each, their ids unique to ``page``."""
    patches = [{"patch_id": p, "patchname": f"KB{p}.msu", "severity": "Critical", "patch_status": "Missing",
                "bulletinid": f"MS-{p}", "vendor_name": "Microsoft", "installed_time": None} for p in (1, 2)]
    return [{"resource_id": 1000 * page + k, "resource_name": f"PC-{page}-{k}", "patches": patches}
            for k in range(SYSTEMS_A_PAGE)]


def page_item(run: RunRecord, page: int, total_pages: int = 10, total_records: int = 30) -> PatchPage:
    assert run.snapshot_id is not None
    return PatchPage(snapshot_id=run.snapshot_id, page=page, total_pages=total_pages, total_records=total_records,
                     rows=page_rows(systems_of(page), page))


def stored_pages(db_path: Path) -> set[int]:
    """The pages whose systems have rows in patch_system_mapping."""
    return {int(rid) // 1000 for (rid,) in db_rows(db_path, "SELECT DISTINCT resource_id FROM patch_system_mapping")}


@dataclass
class OpenRun:
    """An opened run: its spider, the pipeline, the run record, and ``finished``, which
    completes with the run summary once the checkpoint extension has decided the outcome."""

    spider: DcapiPatchesSpider
    pipeline: MappingPipeline
    run: RunRecord
    finished: asyncio.Future[dict[str, Any]]


@asynccontextmanager
async def opened_run(crawler: Crawler) -> AsyncIterator[OpenRun]:
    """:func:`conftest.opened_spider` with the run's components at hand."""
    finished: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def record(summary: dict[str, Any]) -> None:
        if not finished.done():
            finished.set_result(summary)

    crawler.signals.connect(record, signal=pmp_signals.run_finished, weak=False)
    async with opened_spider(crawler) as spider:
        pipeline = crawler.get_item_pipeline(MappingPipeline)
        assert isinstance(spider, DcapiPatchesSpider) and pipeline is not None
        yield OpenRun(spider, pipeline, get_run(crawler), finished)


async def dcapi_start_requests(spider: DcapiPatchesSpider) -> list[Request]:
    """The spider's start requests for DCAPI pages and the inventory (not the patch catalog)."""
    return [r async for r in spider.start() if is_dcapi(r)]


def is_dcapi(request: Request) -> bool:
    return urlsplit(request.url).path in (PAGE_PATH, INVENTORY_PATH)


def response(request: Request, status: int, body: bytes = b"") -> TextResponse:
    return TextResponse(request.url, status=status, body=body, request=request, encoding="utf-8")


# --- a database failure mid-run ---------------------------------------------------------------------

@deferred_f_from_coro_f
async def test_database_failure_at_a_commit_stops_the_run_and_the_checkpoint_claims_nothing_uncommitted(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pages 1-2 commit; another writer then holds SQLite's write lock past the busy timeout, so
    the commit of pages 3-4 fails: the pipeline stops the run (pmp_database_error, exit 1),
    drops what arrives later, and the checkpoint stays at page 2 with only pages 1-2 stored."""
    crawler = component_crawler(db_path=db_path, PMP_CHECKPOINT_EVERY=2, PMP_TOTAL_SYSTEMS=30,
                                PMP_SQLITE_BUSY_TIMEOUT=0.2, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        pipeline, run = opened.pipeline, opened.run
        for page in (1, 2):
            await pipeline.process_item(page_item(run, page))
        assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(2,)]

        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer, holding the lock past the busy timeout
        try:
            for page in (3, 4):
                await pipeline.process_item(page_item(run, page))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with pytest.raises(DropItem, match="the database failed earlier"):
            await pipeline.process_item(page_item(run, 5))
        summary = await opened.finished

    assert summary["close_reason"] == "pmp_database_error"
    assert summary["exit_code"] == 1 and "database is locked" in summary["message"]
    assert crawler.stats.get_value("pmp/abort_reason") == "pmp_database_error"
    assert (run.pages_committed, run.checkpoint_page) == (2, 2)
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(2,)]
    assert stored_pages(db_path) == {1, 2}
    assert db_rows(db_path, "SELECT close_reason, exit_code, pages_committed FROM dcapi_runs") == [
        ("pmp_database_error", 1, 2)]
    [aborted] = [r for r in caplog.records if getattr(r, "event_type", None) == "run_aborted"]
    assert aborted.levelno == logging.ERROR and aborted.reason == "pmp_database_error"


# --- a run record that cannot be written ----------------------------------------------------------------

@pytest.mark.parametrize("runs_table", ["kept", "dropped"])
@deferred_f_from_coro_f
async def test_a_run_that_cannot_be_recorded_is_not_a_success(
        runs_table: str, db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A clean batch (exit 0) whose row in dcapi_runs cannot be written (its table is gone) ends
    with exit 1 and the cause; with the table there the same run is exit 0."""
    crawler = component_crawler(db_path=db_path, PMP_CHECKPOINT_EVERY=2, PMP_BATCH_PAGES=2, PMP_TOTAL_SYSTEMS=30,
                                **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:  # closed as "finished"
        for page in (1, 2):
            await opened.pipeline.process_item(page_item(opened.run, page))
        if runs_table == "dropped":
            with sqlite3.connect(db_path) as conn:
                conn.execute("DROP TABLE dcapi_runs")
    summary = await opened.finished

    failed = [r for r in caplog.records if getattr(r, "event_type", None) == "run_record_failed"]
    if runs_table == "kept":
        assert summary["exit_code"] == 0 and summary["message"].startswith("batch done: 2 pages")
        assert db_rows(db_path, "SELECT exit_code, pages_committed FROM dcapi_runs") == [(0, 2)]
        assert failed == []
    else:
        assert summary["exit_code"] == 1
        assert "recording the run" in summary["message"] and "dcapi_runs" in summary["message"]
        assert crawler.stats.get_value("pmp/exit_code") == 1
        [record] = failed
        assert record.levelno == logging.ERROR
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(2,)]  # the data stays


# --- the denominator: the inventory, else DCAPI's totalRecords ---------------------------------------------

INVENTORY_ANSWERS = {
    "total": (200, b'{"message_response": {"total": 400}}', 400),
    "server error": (503, b"<html>Service Unavailable</html>", 250),
    "no total": (200, b'{"message_response": {"computers": []}}', 250),
    "not json": (200, b"<html>login</html>", 250),
    "negative total": (200, b'{"message_response": {"total": -1}}', 250),
}


@pytest.mark.parametrize("answer", list(INVENTORY_ANSWERS))
@deferred_f_from_coro_f
async def test_without_a_managed_total_coverage_falls_back_to_dcapi_total_records(
        answer: str, db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status, body, denominator = INVENTORY_ANSWERS[answer]
    crawler = component_crawler(db_path=db_path, PMP_CHECKPOINT_EVERY=1, PMP_BATCH_PAGES=1, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        spider, pipeline, run = opened.spider, opened.pipeline, opened.run
        [inventory, first_page] = await dcapi_start_requests(spider)
        assert inventory.meta.get("pmp_inventory") and first_page.meta["pmp_page"] == 1
        for item in spider.parse_inventory(response(inventory, status, body)):
            assert isinstance(item, InventoryTotal)
            await pipeline.process_item(item)
        await pipeline.process_item(page_item(run, 1, total_pages=84, total_records=250))
        assert run.denominator() == denominator
    summary = await opened.finished

    assert summary["total_systems"] == denominator
    assert summary["coverage"] == SYSTEMS_A_PAGE
    assert summary["coverage_pct"] == round(100.0 * SYSTEMS_A_PAGE / denominator, 2)
    assert f"coverage {SYSTEMS_A_PAGE} of {denominator} systems" in summary["message"]
    fallback = [r for r in caplog.records if getattr(r, "event_type", None) == "inventory_unavailable"]
    if denominator == 400:
        assert fallback == []
        assert db_rows(db_path, "SELECT managed_total FROM dcapi_snapshots") == [(400,)]
    else:
        [warning] = fallback
        assert warning.levelno == logging.WARNING and "falls back to DCAPI totalRecords" in warning.getMessage()
        assert db_rows(db_path, "SELECT managed_total FROM dcapi_snapshots") == [(None,)]


# --- open gaps are retried first ------------------------------------------------------------------------

def gap(page: int) -> dict[str, Any]:
    return {"page_num": page, "error_type": "5xx_server_error", "error_message": "HTTP 503",
            "response_sample": None, "attempts": 3, "http_status": 503}


def test_a_running_snapshot_with_open_gaps_plans_them_with_the_next_pages() -> None:
    running = RunState(snapshot_id=4, snapshot_state="running", last_page=5, total_pages=10, open_gap_pages=[2, 4])
    decision = decide(running, reset=False)
    assert (decision.new_snapshot_reason, decision.first_page, decision.retry_pages) == (None, 6, (2, 4))
    complete = RunState(snapshot_id=4, snapshot_state="complete", last_page=10, total_pages=10, open_gap_pages=[7])
    decision = decide(complete, reset=False)
    assert (decision.new_snapshot_reason, decision.first_page, decision.retry_pages) == (None, None, (7,))
    assert decide(running, reset=True).retry_pages == ()  # a reset starts over: no gap of the old snapshot


@deferred_f_from_coro_f
async def test_open_gaps_are_requested_first_and_leave_the_scheduler_first(db_path: Path) -> None:
    """A running snapshot checkpointed at page 5 of 10 with pages 2 and 4 open: the spider asks
    for 2 and 4 (marked as retried gaps) before 6-10, and Scrapy's scheduler hands them out
    before every new page (after the inventory request, which sets the denominator)."""
    store = Store(f"sqlite:///{db_path}")
    snapshot = store.start_snapshot("", 30)
    store.commit_batch(Batch(snapshot_id=snapshot, customer="", gaps=[gap(2), gap(4)], last_page=5, total_pages=10))
    store.close()

    crawler = component_crawler(db_path=db_path, PMP_BATCH_PAGES=0, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        spider = opened.spider
        requests = await dcapi_start_requests(spider)
        scheduler = build_from_crawler(Scheduler, crawler)
        scheduler.open(spider)
        for request in requests:
            assert scheduler.enqueue_request(request)
        handed_out = []
        while (request := scheduler.next_request()) is not None:
            handed_out.append(request)
        scheduler.close("finished")

    def label(request: Request) -> str | int:
        return "inventory" if request.meta.get("pmp_inventory") else request.meta["pmp_page"]

    assert [label(r) for r in requests] == ["inventory", 2, 4, 6, 7, 8, 9, 10]
    assert [r.meta.get("pmp_retried_gap") for r in requests[1:]] == [True, True, False, False, False, False, False]
    order = [label(r) for r in handed_out]
    # Equal priorities leave Scrapy's (LIFO) memory queue in either order: 2 and 4 come as a pair.
    assert order[0] == "inventory" and set(order[1:3]) == {2, 4} and order[3:] == [6, 7, 8, 9, 10]
    assert min(r.priority for r in requests[1:3]) > max(r.priority for r in requests[3:])


# --- no page gives a page count ----------------------------------------------------------------------------

@deferred_f_from_coro_f
async def test_without_a_page_count_the_spider_probes_at_most_max_probes_pages_then_gives_up(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A first run (page count unknown) whose pages fail in three ways: each failed page asks
    for the next one until MAX_PROBES pages have failed; then the spider asks for nothing more."""
    crawler = component_crawler(db_path=db_path, PMP_TOTAL_SYSTEMS=30, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        spider = opened.spider
        [page_1] = await dcapi_start_requests(spider)
        [gap_1, page_2] = spider.parse_page(response(page_1, 503, b"<html>Service Unavailable</html>"))
        [gap_2, page_3] = spider.parse_page(response(page_2, 200, b"<html>not json</html>"))
        [gap_3] = spider.page_failed(timeout_failure(page_3))

    assert DcapiPatchesSpider.MAX_PROBES == 3
    assert [r.meta["pmp_page"] for r in (page_1, page_2, page_3)] == [1, 2, 3]
    assert [(g.page, g.error_type) for g in (gap_1, gap_2, gap_3)] == [
        (1, "5xx_server_error"), (2, "json_parse_error"), (3, "network_timeout")]
    [gave_up] = [r for r in caplog.records if getattr(r, "event_type", None) == "probe_exhausted"]
    assert gave_up.levelno == logging.ERROR and "after 3 pages" in gave_up.getMessage()


def timeout_failure(request: Request) -> Failure:
    failure = Failure(TwistedTimeoutError("timed out"))
    failure.request = request  # type: ignore[attr-defined]  # as Scrapy's downloader attaches it
    return failure
