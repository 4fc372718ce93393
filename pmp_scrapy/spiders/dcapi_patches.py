"""The ``dcapi_patches`` spider: plans page requests from the run plan and turns each DCAPI
answer into a :class:`PatchPage` or, after the last attempt, a :class:`PageGap`.

It knows nothing of the database: it follows the run plan the checkpoint extension makes at
``spider_opened``; the pipeline stores what it yields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from twisted.python.failure import Failure

from pmp_scrapy.config import apply_spider_arguments, get_config
from pmp_scrapy.envelope import PayloadError, parse_envelope
from pmp_scrapy.envelope_stream import STREAM_ABOVE, LazySystems
from pmp_scrapy.extensions.pacer import max_in_flight
from pmp_scrapy.gaps import gap_type_for_failure, gap_type_for_status
from pmp_scrapy.items import PageGap, PatchPage
from pmp_scrapy.masking import scrub
from pmp_scrapy.plan import page_list, stale_pages
from pmp_scrapy.redaction import redact, response_sample
from pmp_scrapy.rows import page_rows
from pmp_scrapy.run import find_run
from pmp_scrapy.runstop import stop_run
from pmp_scrapy.spiders.catalog_requests import CatalogRequests
from pmp_scrapy.spiders.inventory import INVENTORY_PATH, InventoryRequests
from pmp_scrapy.spiders.page_plan import PagePlanning
from pmp_scrapy.storage.batch import PART_ROWS
from pmp_scrapy.values_guard import one_line

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from pmp_scrapy.config import PMPConfig
    from pmp_scrapy.plan import RunPlan

logger = logging.getLogger(__name__)

PAGE_PATH = "/dcapi/threats/systemreport/patches"


class DcapiPatchesSpider(PagePlanning, CatalogRequests, InventoryRequests, scrapy.Spider):
    """Sweeps ``/dcapi/threats/systemreport/patches`` page by page.

    Arguments (``-a``): ``reset=1`` starts a new snapshot, ``demo=1`` runs against the built-in
    simulator, ``customer=NAME`` scopes every request to one MSP customer."""

    name = "dcapi_patches"

    MAX_REREAD_ROUNDS = 3  # re-reads of pages the tenant shifted past, per run
    _page_totals: dict[int, int]  # page -> totalRecords it was answered with, this run
    _reread_rounds: int

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        apply_spider_arguments(crawler.settings, kwargs)
        spider = super().from_crawler(crawler, *args)
        spider._page_totals = {}
        spider._reread_rounds = 0
        spider.window = 2 * max_in_flight(crawler.settings) + 4
        crawler.signals.connect(spider._ask_for_the_rest, signal=signals.spider_idle)
        crawler.signals.connect(spider._reread_shifted_pages, signal=signals.spider_idle)
        crawler.signals.connect(spider._headers_received, signal=signals.headers_received)
        return spider

    def _ask_for_the_rest(self) -> None:
        """Idle with pages left to ask for (every answer asks for the next ones, so only an
        answer that asked for none leaves this): ask for them now instead of ending the sweep."""
        run = find_run(self.crawler)
        if not self._pages_left() or (run is not None and run.abort_reason is not None):
            return
        self._unanswered = 0
        for request in self._more_pages():
            self.crawler.engine.crawl(request)
        raise DontCloseSpider

    def _reread_shifted_pages(self) -> None:
        """At the end of the sweep, read again the pages answered before the tenant changed
        (``totalRecords`` differs from the latest answer): DCAPI pages are positions in a sorted
        list, so systems added or removed mid-sweep shift others past pages already read."""
        plan = self.plan
        if plan is None or self._total_pages is None or self._reread_rounds >= self.MAX_REREAD_ROUNDS:
            return
        if self._last_total_records is None or (plan.batch_end is not None and plan.batch_end < self._total_pages):
            return  # this run does not reach the end of the sweep: a later run checks
        totals = {**plan.known_page_totals, **self._page_totals}
        shifted = stale_pages(totals, self._last_total_records, self._total_pages)
        run = find_run(self.crawler)
        asked = sorted(run.pages_to_reread - set(shifted)) if run is not None else []
        if run is not None:
            run.pages_to_reread.clear()  # the commits said why (pipeline_reports.report_reread)
        if not shifted and not asked:
            return
        self._reread_rounds += 1
        if shifted:
            logger.warning(
                "the tenant changed during snapshot %d (DCAPI now reports %d systems; %d page(s) were read "
                "before): reading pages %s again so that no system is missed", plan.snapshot_id,
                self._last_total_records, len(shifted),
                page_list(shifted),
                extra={"event_type": "tenant_changed", "total_records": self._last_total_records,
                       "reread_pages": shifted, "round": self._reread_rounds})
        shifted = sorted({*shifted, *asked})
        self.crawler.stats.inc_value("pmp/pages_reread", len(shifted))
        for page in shifted:
            self.crawler.engine.crawl(self.page_request(page, reread=True))
        raise DontCloseSpider

    @property
    def config(self) -> PMPConfig:
        return get_config(self.crawler)

    @property
    def plan(self) -> RunPlan | None:
        """This run's plan, set by the checkpoint extension at ``spider_opened``."""
        run = find_run(self.crawler)
        return run.plan if run is not None else None

    # --- requests --------------------------------------------------------------------------------
    def _url(self, path: str, params: dict[str, Any]) -> str:
        if self.config.customer:
            params["customername"] = self.config.customer
        return f"{self.config.base_url}{path}?{urlencode(params)}"

    def page_request(self, page: int, *, retried_gap: bool = False, reread: bool = False) -> scrapy.Request:
        """The request for one DCAPI page."""
        return scrapy.Request(
            self._url(PAGE_PATH, {"page": page, "pageLimit": self.plan.page_limit if self.plan else self.config.page_limit}),
            callback=self.parse_page,
            errback=self.page_failed,
            dont_filter=True,
            priority=1 if retried_gap else -page,
            meta={"pmp_page": page, "pmp_retried_gap": retried_gap, "pmp_reread": reread,
                  "handle_httpstatus_all": True},
        )

    async def start(self) -> AsyncIterator[Any]:
        plan = self.plan
        if plan is None:
            return
        self._total_pages = plan.known_total_pages
        self._last_total_records: int | None = None
        self._requested_through = 0
        self._expecting = False
        self._admit_by_plan(plan.expected_page_rows)
        if self.config.total_systems is None:
            yield scrapy.Request(
                self._url(INVENTORY_PATH, {"page": 1, "pagelimit": 1}),
                callback=self.parse_inventory, errback=self.inventory_failed, dont_filter=True,
                priority=10, meta={"pmp_inventory": True, "handle_httpstatus_all": True},
            )
        for page in plan.retry_pages:
            if page < 0:
                continue  # a catalog page's gap (page_num -N): see _catalog_start
            yield self.page_request(page, retried_gap=True)
        if plan.first_page is not None:
            self._requested_through = plan.first_page
            self._unanswered = 1
            yield self.page_request(plan.first_page)
            if self._total_pages is not None:
                for request in self._more_pages():
                    yield request
        for request in self._catalog_start():
            yield request
        async for request in self._expected_pages():
            yield request

    # --- callbacks ---------------------------------------------------------------------------------
    def parse_page(self, response: Response) -> Iterator[Any]:
        """Turn a final page response into a PatchPage or a PageGap: whatever fails while the body
        becomes rows (the envelope checks against the request, a value that cannot be read, our own
        error) is an ``invalid_payload`` gap for this page; repaired values are counted in
        ``pmp/values_repaired/<kind>``."""
        assert self.plan is not None
        page = response.meta["pmp_page"]
        retried = response.meta.get("pmp_retried_gap", False)
        self._answered(response.meta)
        self._admit_by_size(page, len(response.body))
        if self._refused_customer(response):
            return
        if response.status != 200:
            if not self._past_the_end(page, retried, f"answered HTTP {response.status}"):
                yield self._gap(page, gap_type_for_status(response.status),
                                f"HTTP {response.status} after {self._attempts(response.meta)} attempt(s)",
                                response.meta, response.body, response.status)
        else:
            try:  # checked against the request; any failure to read the page is the page's gap
                envelope = parse_envelope(response.body, page, self.plan.page_limit)
                # A body past STREAM_ABOVE (systems read one at a time) is packed as it is read.
                big = isinstance(envelope.systems, LazySystems)
                rows = page_rows(envelope.systems, page, part_rows=PART_ROWS if big else None,
                                 total_records=envelope.total_records)
            except PayloadError as exc:
                if not self._past_the_end(page, retried, f"could not be read ({exc.error_type})"):
                    yield self._gap(page, exc.error_type, str(exc), response.meta, response.body, 200)
            except Exception as exc:  # noqa: BLE001 - our own failure too: a gap, not a traceback
                yield self._gap(page, "invalid_payload", f"the page could not be read: {type(exc).__name__} ({exc})",
                                response.meta, response.body, 200)
            else:
                self._learn_total(envelope.total_pages, envelope.total_records)
                if self._past_the_end(page, retried, "answered with no systems" if not envelope.systems
                                      else f"answered with {len(envelope.systems)} systems"):
                    return  # nothing follows from it: pages up to the end are asked for already
                for kind, count in rows.repaired.items():
                    self.crawler.stats.inc_value(f"pmp/values_repaired/{kind}", count)
                self._page_totals[page] = envelope.total_records
                if not envelope.systems and page < envelope.total_pages:
                    logger.warning("page %d of %d has no systems", page, envelope.total_pages,
                                   extra={"event_type": "empty_page", "page": page})
                item = PatchPage(
                    snapshot_id=self.plan.snapshot_id, page=page, total_pages=envelope.total_pages,
                    total_records=envelope.total_records, rows=rows,
                    retried_gap=retried,
                )
                del envelope  # the parsed JSON goes now, not when this generator resumes
                yield item
        if not retried:
            yield from self._more_pages()

    def _headers_received(self, headers: Any, body_length: int, request: scrapy.Request) -> None:
        """A page answer announcing (``Content-Length``) a body past ``STREAM_ABOVE``: one page at
        a time from now on, not once the body is in. At the start of a sweep the pages asked for
        on the previous page count leave before any answer: this holds back those not asked for
        yet while the first big bodies arrive (:meth:`_admit_by_size` decides at the answer)."""
        if "pmp_page" in request.meta and body_length > STREAM_ABOVE and self.window != 1:
            self.__dict__.setdefault("_usual_window", self.window)
            self.window = 1
            logger.info("page %s announces %.1f MB: asking for one page at a time while answers are this large",
                        request.meta["pmp_page"], body_length / 1e6,
                        extra={"event_type": "big_pages", "page": request.meta["pmp_page"], "bytes": body_length})

    def _admit_by_plan(self, page_rows: int | None) -> None:
        """One page at a time from the start when the latest checkpoint says a page holds more
        than ``PART_ROWS`` mappings: the pages asked for before any answer (on the previous page
        count, or a continued sweep's) would otherwise all be big bodies downloading at once.
        The first answer of the usual size restores the window (:meth:`_admit_by_size`)."""
        if (page_rows or 0) > PART_ROWS and self.window != 1:
            self.__dict__.setdefault("_usual_window", self.window)
            self.window = 1
            logger.info("pages of about %d mappings expected (the latest sweep's): asking for one page at a time",
                        page_rows, extra={"event_type": "big_pages", "mappings": page_rows})

    def _admit_by_size(self, page: int, size: int) -> None:
        """After an answer past ``STREAM_ABOVE`` bytes, one page at a time (``window`` 1) until an
        answer of the usual size comes back (then the window it had). Scrapy stops feeding the
        downloader while answers bigger than ``SCRAPER_SLOT_MAX_ACTIVE_SIZE`` wait in its scraper,
        but the requests already in the downloader still arrive: with several asked for, each big
        body (and its rows) piles up behind the batch that commits. The pages of one tenant are
        alike in size, so the last answer tells what the next ones will be. Writes ``window`` and
        ``pmp/pages_one_at_a_time``."""
        usual = self.__dict__.setdefault("_usual_window", self.window)
        big = size > STREAM_ABOVE
        if big and self.window != 1:
            logger.info("page %d is %.1f MB: asking for one page at a time while answers are this large",
                        page, size / 1e6, extra={"event_type": "big_pages", "page": page, "bytes": size})
        elif not big and self.window != usual:
            logger.info("page %d is %.1f MB: back to %d pages in flight", page, size / 1e6, usual,
                        extra={"event_type": "usual_pages", "page": page, "bytes": size})
        if big:
            self.crawler.stats.inc_value("pmp/pages_one_at_a_time")
        self.window = 1 if big else usual

    def page_failed(self, failure: Failure) -> Iterator[Any]:
        """A page whose download raised after its last attempt (or was dropped)."""
        request = failure.request  # type: ignore[attr-defined]
        self._answered(request.meta)
        if failure.check(IgnoreRequest):
            return  # the run is stopping (authentication); the page stays unclaimed
        page = request.meta["pmp_page"]
        message = f"{failure.type.__name__}: {redact(str(failure.value))[:200]}"
        if self._past_the_end(page, request.meta.get("pmp_retried_gap", False), f"failed ({failure.type.__name__})"):
            return
        yield self._gap(page, gap_type_for_failure(failure), message, request.meta, None, None)
        if not request.meta.get("pmp_retried_gap"):
            yield from self._more_pages()

    def _refused_customer(self, response: Response) -> bool:
        """A wrong customer name is the operator's configuration, not a transient page failure:
        PMP answers HTTP 400 "Invalid customer name"; the run stops (exit 1) with no gap."""
        if response.status != 400 or b"invalid customer name" not in response.body[:2000].lower():
            return False
        stop_run(self.crawler, "pmp_config_error",
                 f"PMP does not know the customer {self.config.customer!r} (HTTP 400 Invalid customer name): "
                 "names are exact and case-sensitive; check -a customer / PMP_CUSTOMER")
        return True

    def _attempts(self, meta: dict[str, Any]) -> int:
        return int(meta.get("retry_times", 0)) + 1

    def _gap(self, page: int, error_type: str, message: str, meta: dict[str, Any],
             body: bytes | None, status: int | None) -> PageGap:
        assert self.plan is not None
        self.crawler.stats.inc_value(f"pmp/gaps/{error_type}")
        message = one_line(scrub(message))  # stored and logged: one line, storable, no secret
        sample = response_sample(body) if body else None
        attempts = self._attempts(meta)
        logger.error(
            "page %d failed after %d attempt(s) (%s: %s); recorded as a gap, the sweep goes on",
            page, attempts, error_type, message,
            extra={"event_type": "page_extraction_failed", "page": page, "attempt": attempts,
                   "http_status": status, "error_type": error_type, "error_message": message,
                   "response_sample": sample, "action": "skip_page"},
        )
        return PageGap(
            snapshot_id=self.plan.snapshot_id, page=page, error_type=error_type,
            error_message=message, response_sample=sample, attempts=attempts, http_status=status,
            retried_gap=meta.get("pmp_retried_gap", False),
        )
