"""Scrapy's RetryMiddleware, extended with exponential backoff and ``Retry-After``.

What is retried and how often are Scrapy's own settings: ``RETRY_HTTP_CODES`` (429 and every 5xx,
in ``settings.py``), ``RETRY_TIMES`` (``PMP_MAX_ATTEMPTS`` - 1, set by the environment add-on) and
``RETRY_EXCEPTIONS`` (timeouts, connection errors). This subclass decides *when*: each wait comes
from :func:`~pmp_scrapy.middlewares.backoff.retry_wait` (``PMP_BACKOFF_BASE``, ``PMP_MAX_RETRY_AFTER``),
without blocking the reactor (other pages keep flowing while one waits); a stop of the run
ends every wait at once (:func:`pmp_scrapy.extensions.shutdown.pause`). When attempts run out,
the last response (or exception) goes on to the spider, which records the page as a gap.
Writes Scrapy's ``retry/*`` stats and ``pmp/retry_wait_seconds``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest

from pmp_scrapy.config import get_config
from pmp_scrapy.extensions.shutdown import pause
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.middlewares.backoff import retry_wait
from pmp_scrapy.redaction import response_sample

if TYPE_CHECKING:
    from typing_extensions import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class BackoffRetryMiddleware(RetryMiddleware):
    """Classified retries with backoff; see the module docstring."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        middleware = super().from_crawler(crawler)
        config = get_config(crawler)
        middleware.backoff_base = config.backoff_base
        middleware.max_retry_after = config.max_retry_after
        return middleware

    def _skip(self, request: Request) -> bool:
        return bool(request.meta.get("dont_retry") or request.meta.get(SIDE_REQUEST))

    async def process_response(self, request: Request, response: Response) -> Request | Response:  # type: ignore[override]
        if self._skip(request) or response.status not in self.retry_http_codes:
            return response
        attempt = int(request.meta.get("retry_times", 0)) + 1
        retry = self._retry(request, f"HTTP {response.status}")
        if retry is None:
            return response
        wait = retry_wait(response.status, response.headers.get(b"Retry-After"), attempt=attempt,
                          base=self.backoff_base, cap=self.max_retry_after)
        self._log_attempt(request, attempt, wait, http_status=response.status,
                          error_message=f"HTTP {response.status}",
                          response_sample=response_sample(response.body))
        await self._wait(wait)
        return retry

    async def process_exception(self, request: Request, exception: Exception) -> Request | Response | None:  # type: ignore[override]
        if self._skip(request) or not isinstance(exception, self.exceptions_to_retry):
            return None
        attempt = int(request.meta.get("retry_times", 0)) + 1
        retry = self._retry(request, exception)
        if retry is None:
            return None
        wait = retry_wait(None, None, attempt=attempt, base=self.backoff_base, cap=self.max_retry_after)
        self._log_attempt(request, attempt, wait, http_status=None,
                          error_message=type(exception).__name__, response_sample=None)
        await self._wait(wait)
        return retry

    async def _wait(self, seconds: float) -> None:
        """Wait before the retry; a stop of the run ends the wait at once and drops the request
        (the page stays unclaimed for the next run)."""
        if seconds > 0:
            self.crawler.stats.inc_value("pmp/retry_wait_seconds", round(seconds, 3))
        if not await pause(self.crawler, seconds):
            raise IgnoreRequest("the run is stopping: the retry wait was cut short")

    def _log_attempt(self, request: Request, attempt: int, wait: float, **fields: object) -> None:
        page = request.meta.get("pmp_page")
        logger.warning(
            "page %s attempt %d failed (%s); retrying in %.1f s", page, attempt,
            fields["error_message"], wait,
            extra={"event_type": "page_extraction_failed", "page": page, "attempt": attempt,
                   "action": "retry", "retry_in_s": round(wait, 3), **fields},
        )
