"""The patch catalog's half of the ``dcapi_patches`` spider (a mixin): requests for
``/dcapi/threats/patches`` and the items their answers become. Swept once per snapshot, in the
snapshot's first run (and again in a later run of it only if that sweep did not finish; a partial
catalog retries just its gaps). Catalog requests are ordinary PMP requests: the same token,
retries, download slot and rate. Catalog page N's gap is page_num -N
(:func:`pmp_scrapy.catalog.gap_page_num`), which is also its ``pmp_page`` meta."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy.exceptions import IgnoreRequest
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
from pmp_scrapy.envelope import PayloadError
from pmp_scrapy.gaps import gap_type_for_failure, gap_type_for_status
from pmp_scrapy.items import CatalogGap, CatalogPage, CatalogUnavailable
from pmp_scrapy.masking import scrub
from pmp_scrapy.redaction import redact, response_sample
from pmp_scrapy.run import find_run
from pmp_scrapy.values_guard import one_line

if TYPE_CHECKING:
    from scrapy.http import Response

logger = logging.getLogger("pmp_scrapy.spiders.dcapi_patches")


class CatalogRequests:
    """The catalog requests and callbacks of :class:`~pmp_scrapy.spiders.dcapi_patches.DcapiPatchesSpider`
    (which supplies ``config``, ``plan``, ``crawler``, ``_url``, ``_attempts`` and
    ``_refused_customer``)."""

    crawler: Any
    config: Any
    plan: Any
    _url: Any
    _attempts: Any
    _refused_customer: Any

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
