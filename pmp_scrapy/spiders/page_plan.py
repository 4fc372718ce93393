"""Which system-report pages the ``dcapi_patches`` spider asks for, and when (a mixin).

The first page of the run first; then, once an answer gives the page count (``totalPages``),
every page up to the batch end or the last page. A new snapshot does not wait for that answer
when the snapshot before it had a page count (:attr:`pmp_scrapy.plan.RunPlan.expected_total_pages`):
at real latency (seconds a page) the wait would leave the rate limit idle, so pages 2.. up to
that count are asked for at the pace meanwhile, and answers for pages past the real last page
(the tenant shrank) are dropped as no data and no gap. When no answer gives the page count
(the first pages fail), the next pages are probed, a few at most.

Pages are asked for lazily: at most :attr:`PagePlanning.window` of them unanswered at a time
(twice what the pacer may keep in flight, plus a few), each answer asking for the next, so a
tenant of 100,000 systems (3,300 pages) never has thousands of requests waiting in Scrapy's
scheduler (memory), whatever page count an answer claims.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy

logger = logging.getLogger("pmp_scrapy.spiders.dcapi_patches")


class PagePlanning:
    """The page-request planning of :class:`~pmp_scrapy.spiders.dcapi_patches.DcapiPatchesSpider`
    (which supplies ``plan``, ``crawler`` and ``page_request``)."""

    crawler: Any
    plan: Any
    page_request: Any

    MAX_PROBES = 3
    BACKOUT_POLL = 0.05  # seconds between looks at a full downloader while pages are expected
    _total_pages: int | None = None  # the page count the latest answer gave (or the snapshot knew)
    _last_total_records: int | None = None
    _requested_through = 0  # the highest page asked for so far
    _expecting = False  # pages are being asked for on the previous snapshot's count
    window = 36  # unanswered page requests at most (set from PMP_MAX_IN_FLIGHT by the spider)
    _unanswered = 0  # page requests of this sweep asked for and not answered yet (gap retries aside)

    async def _expected_pages(self) -> AsyncIterator[scrapy.Request]:
        """A new snapshot's pages 2.. up to the page count of the snapshot before, asked for at
        the pace while the first page's answer (seconds at real latency) is still on its way:
        waiting for it would leave the rate limit idle. One request at a time as the downloader
        has room, so that once an answer gives the real count (``_more_pages`` then asks for any
        page beyond), few pages past a shrunken tenant's end are asked for; their answers are
        dropped (``_past_the_end``)."""
        plan = self.plan
        if plan is None or plan.first_page is None or not plan.expected_total_pages:
            return
        last = plan.expected_total_pages if plan.batch_end is None else min(plan.expected_total_pages, plan.batch_end)
        engine = self.crawler.engine
        self._expecting = True
        try:
            while self._total_pages is None and self._requested_through < last and engine.running:
                if engine.needs_backout():
                    await asyncio.sleep(self.BACKOUT_POLL)
                    continue
                if self._unanswered >= self.window:
                    await asyncio.sleep(self.BACKOUT_POLL)
                    continue
                self._requested_through += 1
                self._unanswered += 1
                self.crawler.stats.inc_value("pmp/pages_expected")
                yield self.page_request(self._requested_through)
        finally:
            self._expecting = False

    def _last_wanted_page(self) -> int | None:
        plan = self.plan
        if plan is None or plan.first_page is None or self._total_pages is None:
            return None
        last = self._total_pages
        if plan.batch_end is not None:
            last = min(last, plan.batch_end)
        return last

    def _more_pages(self) -> Iterator[scrapy.Request]:
        """Requests for pages not yet asked for, up to the batch end and the last page, while
        fewer than ``window`` are unanswered."""
        last = self._last_wanted_page()
        if last is None:
            if not self._expecting:  # else _expected_pages asks for the following pages
                yield from self._probe()
            return
        while self._requested_through < last and self._unanswered < self.window:
            self._requested_through += 1
            self._unanswered += 1
            yield self.page_request(self._requested_through)

    def _answered(self, meta: dict[str, Any]) -> None:
        """A page request of the sweep (not a gap's retry, not a re-read) has its answer."""
        if not meta.get("pmp_retried_gap") and not meta.get("pmp_reread"):
            self._unanswered = max(self._unanswered - 1, 0)

    def _pages_left(self) -> bool:
        """Whether pages up to the batch end or the last page remain to be asked for."""
        last = self._last_wanted_page()
        return last is not None and self._requested_through < last

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
            self._unanswered += 1
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

    def _past_the_end(self, page: int, retried: bool, what: str) -> bool:
        """Whether ``page`` lies past the last page this sweep knows (asked for on the previous
        snapshot's count, and the tenant shrank): then it is no data and no gap, only an INFO
        line. A retried gap is settled by its answer as before."""
        if retried or self._total_pages is None or page <= max(self._total_pages, 1):
            return False
        self.crawler.stats.inc_value("pmp/pages_past_the_end")
        logger.info("page %d %s, past the last page %d: dropped (asked for before the tenant shrank)",
                    page, what, self._total_pages,
                    extra={"event_type": "page_past_the_end", "page": page, "total_pages": self._total_pages})
        return True
