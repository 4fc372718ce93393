"""The ``dcapi_patches`` spider: plans page requests from the run plan and turns each DCAPI
answer into a :class:`PatchPage` or, after the last attempt, a :class:`PageGap`.

It knows nothing of the database: it follows the run plan the checkpoint extension makes at
``spider_opened``; the pipeline stores what it yields.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider, DownloadTimeoutError, IgnoreRequest
from twisted.internet.error import TCPTimedOutError, TimeoutError as TwistedTimeoutError
from twisted.python.failure import Failure

from pmp_scrapy.catalog import (
    CATALOG_PATH,
    CatalogSweep,
    EndpointUnsupported,
    catalog_rows,
    gap_page_num,
    parse_catalog,
    unavailable_reason,
)
from pmp_scrapy.config import apply_spider_arguments, get_config
from pmp_scrapy.envelope import PayloadError, parse_envelope
from pmp_scrapy.items import CatalogGap, CatalogPage, CatalogUnavailable, InventoryTotal, PageGap, PatchPage
from pmp_scrapy.masking import scrub
from pmp_scrapy.plan import stale_pages
from pmp_scrapy.redaction import redact, response_sample
from pmp_scrapy.rows import page_rows
from pmp_scrapy.run import find_run
from pmp_scrapy.runstop import stop_run
from pmp_scrapy.values_guard import one_line

if TYPE_CHECKING:
    from typing_extensions import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from pmp_scrapy.config import PMPConfig
    from pmp_scrapy.plan import RunPlan

logger = logging.getLogger(__name__)

PAGE_PATH = "/dcapi/threats/systemreport/patches"
INVENTORY_PATH = "/api/1.4/som/computers"


def gap_type_for_status(status: int) -> str:
    """The contract's gap ``error_type`` for a final HTTP status."""
    if status == 429:
        return "429_rate_limit"
    if 500 <= status <= 599:
        return "5xx_server_error"
    return "unexpected_status"


def gap_type_for_failure(failure: Failure) -> str:
    """``network_timeout`` or ``network_error`` for a download that raised."""
    if failure.check(DownloadTimeoutError, TwistedTimeoutError, TCPTimedOutError, TimeoutError):
        return "network_timeout"
    return "network_error"


class DcapiPatchesSpider(scrapy.Spider):
    """Sweeps ``/dcapi/threats/systemreport/patches`` page by page.

    Arguments (``-a``): ``reset=1`` starts a new snapshot, ``demo=1`` runs against the built-in
    simulator, ``customer=NAME`` scopes every request to one MSP customer."""

    name = "dcapi_patches"
    MAX_PROBES = 3

    MAX_REREAD_ROUNDS = 3  # re-reads of pages the tenant shifted past, per run
    _page_totals: dict[int, int]  # page -> totalRecords it was answered with, this run
    _reread_rounds: int

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        apply_spider_arguments(crawler.settings, kwargs)
        spider = super().from_crawler(crawler, *args)
        spider._page_totals = {}
        spider._reread_rounds = 0
        crawler.signals.connect(spider._reread_shifted_pages, signal=signals.spider_idle)
        return spider

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
        if not shifted:
            return
        self._reread_rounds += 1
        logger.warning(
            "the tenant changed during snapshot %d (DCAPI now reports %d systems; %d page(s) were read "
            "before): reading pages %s again so that no system is missed", plan.snapshot_id,
            self._last_total_records, len(shifted), ", ".join(map(str, shifted[:20])) + (" …" if len(shifted) > 20 else ""),
            extra={"event_type": "tenant_changed", "total_records": self._last_total_records,
                   "reread_pages": shifted, "round": self._reread_rounds})
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
            yield self.page_request(plan.first_page)
            if self._total_pages is not None:
                for request in self._more_pages():
                    yield request
        for request in self._catalog_start():
            yield request

    def _last_wanted_page(self) -> int | None:
        plan = self.plan
        if plan is None or plan.first_page is None or self._total_pages is None:
            return None
        last = self._total_pages
        if plan.batch_end is not None:
            last = min(last, plan.batch_end)
        return last

    def _more_pages(self) -> Iterator[scrapy.Request]:
        """Requests for pages not yet asked for, up to the batch end and the last page."""
        last = self._last_wanted_page()
        if last is None:
            yield from self._probe()
            return
        while self._requested_through < last:
            self._requested_through += 1
            yield self.page_request(self._requested_through)

    def _probe(self) -> Iterator[scrapy.Request]:
        """The page count is unknown because the first pages failed: try the next page, a few
        times at most, so one broken page does not end the sweep."""
        plan = self.plan
        if plan is None or plan.first_page is None or self._total_pages is not None:
            return
        following = self._requested_through + 1
        if following - plan.first_page >= self.MAX_PROBES:
            logger.error("no page answered with a page count after %d pages; giving up this run",
                         self.MAX_PROBES, extra={"event_type": "probe_exhausted"})
            return
        if plan.batch_end is None or following <= plan.batch_end:
            self._requested_through = following
            yield self.page_request(following)

    def _learn_total(self, total_pages: int, total_records: int) -> None:
        if self._total_pages is not None and total_pages != self._total_pages:
            logger.warning(
                "the server now reports %d pages (was %d); the sweep follows the new count",
                total_pages, self._total_pages,
                extra={"event_type": "total_pages_changed", "old": self._total_pages, "new": total_pages},
            )
        self._total_pages = total_pages
        self._last_total_records = total_records
        self.crawler.stats.set_value("pmp/total_pages", total_pages)
        self.crawler.stats.set_value("pmp/total_records", total_records)

    # --- callbacks ---------------------------------------------------------------------------------
    def parse_page(self, response: Response) -> Iterator[Any]:
        """Turn a final page response into a PatchPage or a PageGap: whatever fails while the body
        becomes rows (the envelope checks against the request, a value that cannot be read, our own
        error) is an ``invalid_payload`` gap for this page; repaired values are counted in
        ``pmp/values_repaired/<kind>``."""
        assert self.plan is not None
        page = response.meta["pmp_page"]
        retried = response.meta.get("pmp_retried_gap", False)
        if self._refused_customer(response):
            return
        if response.status != 200:
            yield self._gap(page, gap_type_for_status(response.status),
                            f"HTTP {response.status} after {self._attempts(response.meta)} attempt(s)",
                            response.meta, response.body, response.status)
        else:
            try:  # checked against the request; any failure to read the page is the page's gap
                envelope = parse_envelope(response.body, page, self.plan.page_limit)
                rows = page_rows(envelope.systems, page)
            except PayloadError as exc:
                yield self._gap(page, exc.error_type, str(exc), response.meta, response.body, 200)
            except Exception as exc:  # noqa: BLE001 - our own failure too: a gap, not a traceback
                yield self._gap(page, "invalid_payload", f"the page could not be read: {type(exc).__name__} ({exc})",
                                response.meta, response.body, 200)
            else:
                for kind, count in rows.repaired.items():
                    self.crawler.stats.inc_value(f"pmp/values_repaired/{kind}", count)
                self._learn_total(envelope.total_pages, envelope.total_records)
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

    def page_failed(self, failure: Failure) -> Iterator[Any]:
        """A page whose download raised after its last attempt (or was dropped)."""
        request = failure.request  # type: ignore[attr-defined]
        if failure.check(IgnoreRequest):
            return  # the run is stopping (authentication); the page stays unclaimed
        page = request.meta["pmp_page"]
        message = f"{failure.type.__name__}: {redact(str(failure.value))[:200]}"
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

    def parse_inventory(self, response: Response) -> Iterator[Any]:
        """The managed-system count, the denominator of coverage."""
        assert self.plan is not None
        if self._refused_customer(response):
            return
        total = None
        if response.status == 200:
            try:
                total = int(json.loads(response.body)["message_response"]["total"])
            except (ValueError, KeyError, TypeError):
                total = None
        if total is None or total < 0:
            logger.warning(
                "the inventory endpoint gave no managed-system total (HTTP %d); coverage falls back "
                "to DCAPI totalRecords", response.status, extra={"event_type": "inventory_unavailable"})
            return
        self.crawler.stats.set_value("pmp/managed_total", total)
        yield InventoryTotal(snapshot_id=self.plan.snapshot_id, managed_total=total)

    def inventory_failed(self, failure: Failure) -> None:
        """The inventory request raised; coverage falls back to DCAPI totalRecords."""
        if failure.check(IgnoreRequest):
            return
        logger.warning("the inventory request failed (%s); coverage falls back to DCAPI totalRecords",
                       failure.type.__name__, extra={"event_type": "inventory_unavailable"})

    # --- the patch catalog (/dcapi/threats/patches) ---------------------------------------------------
    # Swept once per snapshot, in the snapshot's first run (and again in a later run of it only if
    # that sweep did not finish; a partial catalog retries just its gaps). Catalog requests are
    # ordinary PMP requests: the same token, retries, download slot and rate. Catalog page N's
    # gap is page_num -N (pmp_scrapy.catalog.gap_page_num), which is also its ``pmp_page`` meta.
    CATALOG_INTERLEAVE = 10  # catalog page n is queued about 10*n system-report pages in
    _catalog: CatalogSweep | None = None  # this run's catalog sweep, set by _catalog_start
    _catalog_warned = False

    def _catalog_start(self) -> Iterator[scrapy.Request]:
        """The first catalog requests of this run, if the snapshot's catalog needs any."""
        plan, run, limit = self.plan, find_run(self.crawler), self.config.catalog_page_limit
        if plan is None or not limit:
            return
        state = run.state.catalog_state if run is not None and run.state is not None else None
        retry = [-page for page in plan.retry_pages if page < 0]
        if plan.new_snapshot or state is None or (state == "partial" and not retry):
            sweep = CatalogSweep(full=True, page_limit=limit)
        elif state == "partial":
            sweep = CatalogSweep(full=False, page_limit=limit, retry_pages=retry)
        else:
            return  # complete or unavailable: this snapshot's catalog is settled
        self._catalog = sweep
        for page in sweep.start():
            yield self.catalog_request(page, retried_gap=not sweep.full)

    def catalog_request(self, page: int, *, retried_gap: bool = False) -> scrapy.Request:
        """The request for one catalog page (low priority: it never holds the system report up)."""
        first = self.plan.first_page if self.plan is not None and self.plan.first_page is not None else 0
        return scrapy.Request(
            self._url(CATALOG_PATH, {"page": page, "pageLimit": self.config.catalog_page_limit}),
            callback=self.parse_catalog, errback=self.catalog_failed, dont_filter=True,
            priority=0 if retried_gap else -(first + self.CATALOG_INTERLEAVE * page),
            meta={"pmp_catalog_page": page, "pmp_page": gap_page_num(page), "pmp_retried_gap": retried_gap,
                  "handle_httpstatus_all": True},
        )

    def parse_catalog(self, response: Response) -> Iterator[Any]:
        """Turn a final catalog response into a CatalogPage, a CatalogGap or CatalogUnavailable:
        whatever fails while the answer is read (a body that cannot be, our own error) is an
        ``invalid_payload`` gap for the page, never a traceback; repaired values are counted in
        ``pmp/values_repaired/<kind>``."""
        sweep, page = self._catalog, response.meta["pmp_catalog_page"]
        if self._refused_customer(response):
            return
        if sweep is None or sweep.stopped:
            return
        try:  # all the answer makes, made before any of it leaves: a failure is this page's gap alone
            results = list(self._catalog_answer(response, sweep, page))
        except Exception as exc:  # noqa: BLE001 - our own failure too: a gap, not a traceback
            results = list(self._catalog_gap(page, "invalid_payload", f"the catalog page could not be read: "
                                             f"{type(exc).__name__} ({exc})", response.meta, response.body,
                                             response.status))
        yield from results

    def _catalog_answer(self, response: Response, sweep: CatalogSweep, page: int) -> Iterator[Any]:
        meta = response.meta
        reason = unavailable_reason(response.status, response.body)
        if reason is not None:
            yield from self._catalog_unavailable(reason)
            return
        if response.status != 200:
            yield from self._catalog_gap(page, gap_type_for_status(response.status),
                                         f"HTTP {response.status} after {self._attempts(meta)} attempt(s)",
                                         meta, response.body, response.status)
            return
        try:
            envelope = parse_catalog(response.body, self.config.catalog_page_limit)
            rows = catalog_rows(envelope.entries, page)
        except EndpointUnsupported as exc:
            yield from self._catalog_unavailable(str(exc))
            return
        except PayloadError as exc:
            yield from self._catalog_gap(page, exc.error_type, str(exc), meta, response.body, 200)
            return
        for kind, count in rows.repaired.items():
            self.crawler.stats.inc_value(f"pmp/values_repaired/{kind}", count)
        more = sweep.answered(page, envelope.total_pages, envelope.total_records, rows.entries, rows.skipped)
        self.crawler.stats.inc_value("pmp/catalog/pages")
        yield CatalogPage(snapshot_id=self._snapshot_id(), page=page, total_pages=envelope.total_pages,
                          total_records=envelope.total_records, rows=rows,
                          retried_gap=meta.get("pmp_retried_gap", False), end=sweep.end())
        del envelope
        for following in more:
            yield self.catalog_request(following)

    def catalog_failed(self, failure: Failure) -> Iterator[Any]:
        """A catalog page whose download raised after its last attempt."""
        if failure.check(IgnoreRequest):
            return  # the run is stopping; the catalog stays unfinished and the next run sweeps it
        request = failure.request  # type: ignore[attr-defined]
        if self._catalog is None or self._catalog.stopped:
            return
        message = f"{failure.type.__name__}: {redact(str(failure.value))[:200]}"
        yield from self._catalog_gap(request.meta["pmp_catalog_page"], gap_type_for_failure(failure), message,
                                     request.meta, None, None)

    def _snapshot_id(self) -> int:
        assert self.plan is not None
        return self.plan.snapshot_id

    def _catalog_gap(self, page: int, error_type: str, message: str, meta: dict[str, Any],
                     body: bytes | None, status: int | None) -> Iterator[Any]:
        sweep = self._catalog
        assert sweep is not None
        self.crawler.stats.inc_value(f"pmp/gaps/{error_type}")
        self.crawler.stats.inc_value("pmp/catalog/gaps")
        message = one_line(scrub(message))  # stored and logged: one line, storable, no secret
        sample = response_sample(body) if body else None
        attempts = self._attempts(meta)
        logger.error(
            "catalog page %d failed after %d attempt(s) (%s: %s); recorded as a gap (page_num %d), the "
            "sweep goes on", page, attempts, error_type, message, gap_page_num(page),
            extra={"event_type": "page_extraction_failed", "endpoint": "catalog", "page": gap_page_num(page),
                   "catalog_page": page, "attempt": attempts, "http_status": status, "error_type": error_type,
                   "error_message": message, "response_sample": sample, "action": "skip_page"},
        )
        more = sweep.failed(page)
        yield CatalogGap(snapshot_id=self._snapshot_id(), page=page, error_type=error_type, error_message=message,
                         response_sample=sample, attempts=attempts, http_status=status,
                         retried_gap=meta.get("pmp_retried_gap", False), end=sweep.end())
        for following in more:
            yield self.catalog_request(following)

    def _catalog_unavailable(self, reason: str) -> Iterator[Any]:
        """The server has no catalog: one WARNING, no gap, no more catalog requests."""
        assert self._catalog is not None
        self._catalog.stop()
        if self._catalog_warned:
            return
        self._catalog_warned = True
        reason = one_line(scrub(reason))
        self.crawler.stats.set_value("pmp/catalog/state", "unavailable")
        logger.warning(
            "the server has no patch catalog (%s from %s): CVE data is unavailable; the patch mappings "
            "are not affected", reason, CATALOG_PATH,
            extra={"event_type": "catalog_unavailable", "reason": reason, "endpoint": "catalog"})
        yield CatalogUnavailable(snapshot_id=self._snapshot_id(), reason=reason)
