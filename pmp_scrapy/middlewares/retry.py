"""Scrapy's RetryMiddleware, extended with exponential backoff and ``Retry-After``.

What is retried and how often are Scrapy's own settings: ``RETRY_HTTP_CODES`` (429 and every 5xx,
in ``settings.py``), ``RETRY_TIMES`` (``PMP_MAX_ATTEMPTS`` - 1, set by the environment add-on) and
``RETRY_EXCEPTIONS`` (timeouts, connection errors); and, added here, **a 200 whose body is not
JSON** (an HTML page, an empty body, a truncated one: PMP answers throttling with an HTML page
and status 200; contract, "Rate and retries"), told by :func:`not_json` without parsing the
body. JSON of the wrong shape is the spider's ``invalid_payload``, never retried. Every PMP
request is retried this way (pages, inventory, catalog, customers); side requests (token calls,
Slack) are not. This subclass decides *when*: each wait comes
from :func:`~pmp_scrapy.middlewares.backoff.retry_wait` (``PMP_BACKOFF_BASE``, ``PMP_MAX_RETRY_AFTER``),
without blocking the reactor (other pages keep flowing while one waits); a stop of the run
ends every wait at once (:func:`pmp_scrapy.extensions.shutdown.pause`). When attempts run out,
the last response (or exception) goes on to the spider, which records the page as a gap.
Writes Scrapy's ``retry/*`` stats (reason ``HTTP 200 not JSON`` for the added kind) and
``pmp/retry_wait_seconds``.
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
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: Bytes JSON allows around a value (RFC 8259), and the UTF-8 byte-order mark a server may send first.
_JSON_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_CLOSER = {ord("{"): ord("}"), ord("["): ord("]")}
NOT_JSON_REASON = "HTTP 200 not JSON"  # the retry/reason_count/<reason> stat


def not_json(body: bytes) -> str | None:
    """Why a status-200 ``body`` cannot be the JSON a PMP endpoint answers ("an empty body",
    "an HTML page", "a body that is not JSON", "truncated JSON"), or ``None`` when it looks like
    one JSON object or array. Cheap: it reads the first and the last byte that are not
    whitespace, never parses (the spider parses the body once, later), so a JSON body cut
    exactly after a closing bracket of its own kind passes and becomes the spider's
    ``json_parse_error`` gap. Whether the JSON has the right shape is the spider's question."""
    start, end = 0, len(body)
    if body.startswith(_BOM):
        start = len(_BOM)
    while start < end and body[start] in _JSON_SPACE:
        start += 1
    while end > start and body[end - 1] in _JSON_SPACE:
        end -= 1
    if start == end:
        return "an empty body"
    first = body[start]
    if first == ord("<"):
        return "an HTML page"
    if first not in _CLOSER:
        return "a body that is not JSON"
    if end - start < 2 or body[end - 1] != _CLOSER[first]:
        return "truncated JSON"
    return None


class BackoffRetryMiddleware(RetryMiddleware):
    """Classified retries with backoff; see the module docstring."""

    backoff_base: float
    max_retry_after: float

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
        if self._skip(request):
            return response
        if response.status in self.retry_http_codes:
            reason, message = f"HTTP {response.status}", f"HTTP {response.status}"
        elif response.status == 200 and (what := not_json(response.body)) is not None:
            reason, message = NOT_JSON_REASON, f"HTTP 200 with {what}, not JSON"
        else:
            return response
        attempt = int(request.meta.get("retry_times", 0)) + 1
        retry = self._retry(request, reason)
        if retry is None:
            return response  # the last attempt: the spider records the page as a gap
        wait = retry_wait(response.status, response.headers.get(b"Retry-After"), attempt=attempt,
                          base=self.backoff_base, cap=self.max_retry_after)
        self._log_attempt(request, attempt, wait, http_status=response.status, error_message=message,
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
            self.crawler.stats.inc_value("pmp/retry_wait_seconds", round(seconds, 3))  # type: ignore[arg-type]
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
