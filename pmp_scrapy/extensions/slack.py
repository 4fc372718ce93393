"""SlackNotifier: optional Slack messages about a run (spec FR-7).

Off, with no Slack call at all, unless ``SLACK_WEBHOOK_URL`` resolves (``-s``, the OS keyring,
then the environment; it is a secret, never copied into settings and masked in every log line).
The URL must be ``https://``; ``http://`` is accepted only for a loopback host (a local test
receiver). Any other value disables Slack with a warning that does not repeat the URL.

Messages: run start, coverage passing 25/50/75%, page failures (pages that became gaps),
batch complete (with the progress block), target met, fatal end. At most one message per
``PMP_SLACK_MIN_INTERVAL`` seconds (60): what waits is coalesced into the next message; at the
end of a run the last message waits out the interval (at most that long) rather than break it.
A run that finds the target already met sends nothing.

Posts go through Scrapy's engine (``engine.download_async``, its own download slot) and never
block or stop extraction. Each post asks for ``Connection: close`` (posts are a minute apart:
a connection kept idle in the pool that long is one the receiver may have closed, and the
project's download handler never re-sends silently), and is tried once more at once when the
connection fails before an answer (:func:`retry_post`); every other failure is a warning; a 404 or 410 means the webhook
is gone and disables Slack for the rest of the run. Once the engine is closing (the last batch
commit, the run summary), ``download_async`` cannot be used: Scrapy 2.19 performs the download
but then raises ``AlreadyCalledError`` from the closing engine slot, losing the response. Those
last posts go to the engine's downloader directly (same middlewares, slot and timeout). The
``run_finished`` handler returns once the last message is sent (the checkpoint extension awaits it).

Reads ``SLACK_WEBHOOK_URL``, ``PMP_SLACK_MIN_INTERVAL`` and the run record. Listens to
``engine_started``, ``batch_committed``, ``run_finished``. Writes stats ``pmp/slack/sent``,
``pmp/slack/failed``, ``pmp/slack/retried``, ``pmp/slack/disabled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import DownloadConnectionRefusedError, DownloadFailedError, NotConfigured
from scrapy.http import JsonRequest
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.asyncio import sleep
from scrapy.utils.defer import maybe_deferred_to_future

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import get_config, is_loopback_host
from pmp_scrapy.coverage import target_systems
from pmp_scrapy.credentials import resolve_secret
from pmp_scrapy.logformat import register_secret, scrub
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.run import find_run, get_run

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from pmp_scrapy.run import RunRecord

logger = logging.getLogger(__name__)

MILESTONES = (25, 50, 75)
POST_ATTEMPTS = 2
MAX_TEXT = 3500  # characters per Slack message
POST_TIMEOUT = 10  # seconds a post may take


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Slack webhook, or ``None`` if it can."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "is not a URL"
    if any(ch.isspace() for ch in url.strip()) or not host:
        return "is not a URL"
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host)):
        return None
    return "must be an https:// URL"


class SlackNotifier:
    """See the module docstring."""

    def __init__(self, crawler: Crawler, url: str, interval: float) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = get_config(crawler)
        self.url = url
        self.interval = interval
        self.disabled = False
        self._pending: list[str] = []
        self._last_sent: float | None = None
        self._sender: asyncio.Future[None] | None = None
        self._finishing = False
        self._pct: float | None = None
        self._passed: set[int] = set()
        self._gap_pages: list[int] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        url = resolve_secret("SLACK_WEBHOOK_URL", crawler.settings)
        if not url:
            raise NotConfigured  # silent: Slack is optional and off by default
        url = url.strip()
        register_secret(url)
        problem = webhook_problem(url)
        if problem:
            logger.warning("Slack notifications are off: SLACK_WEBHOOK_URL %s", problem,
                           extra={"event_type": "slack_disabled", "reason": "invalid_url"})
            raise NotConfigured
        register_secret(urlsplit(url).path)  # the path is the secret part of a Slack webhook
        extension = cls(crawler, url, get_config(crawler).slack_min_interval)
        crawler.signals.connect(extension.engine_started, signal=signals.engine_started)
        crawler.signals.connect(extension.batch_committed, signal=pmp_signals.batch_committed)
        crawler.signals.connect(extension.run_finished, signal=pmp_signals.run_finished)
        return extension

    # --- what is said -------------------------------------------------------------------------------
    @property
    def run(self) -> RunRecord:
        return get_run(self.crawler)

    def _block(self) -> str:
        run = self.run
        total = run.denominator()
        lines = ["*PMP DCAPI Extraction Progress*",
                 f"• Page: {run.checkpoint_page or 0}/{run.total_pages or '?'}",
                 f"• Systems: {run.coverage:,}/{total:,} ({100.0 * run.coverage / total:.1f}%)"
                 if total else f"• Systems: {run.coverage:,}",
                 f"• Patches: {run.patches_extracted:,}"]
        errors = f"• Errors: {len(self._gap_pages)}"
        if self._gap_pages:
            shown = ", ".join(str(p) for p in self._gap_pages[:10])
            errors += f" (pages {shown}{', …' if len(self._gap_pages) > 10 else ''})"
        lines.append(errors)
        eta = run.eta_minutes()
        if eta is not None:
            lines.append(f"• ETA: {eta:.0f} minutes")
        return "\n".join(lines)

    def engine_started(self) -> None:
        run = find_run(self.crawler)
        if run is None:
            return
        plan, total = run.plan, run.denominator()
        if total:
            self._pct = 100.0 * run.coverage / total
        text = "🔄 PMP DCAPI extraction started"
        if plan is not None:
            pages = (f"pages {plan.first_page}–{plan.batch_end or 'end'}" if plan.first_page is not None
                     else "retrying gaps only")
            text += f": snapshot {plan.snapshot_id}, {pages}"
        if total:
            text += (f" (target: {target_systems(self.config.coverage_target, total):,} of "
                     f"{total:,} systems; now {run.coverage:,})")
        self._enqueue(text)

    def batch_committed(self, result: Any, pages: list[int], gaps: list[dict[str, Any]]) -> None:
        for gap in gaps:
            self._gap_pages.append(gap["page_num"])
            cause = f"HTTP {gap['http_status']}, {gap['error_type']}" if gap.get("http_status") else gap["error_type"]
            self._enqueue(f"⚠️ Page {gap['page_num']} failed after {gap['attempts']} attempts ({cause})")
        pct = result.coverage_pct if self.run.denominator() else None
        if pct is None:
            return
        previous, self._pct = self._pct if self._pct is not None else 0.0, pct
        passed = [m for m in MILESTONES if m not in self._passed and previous < m <= pct]
        if passed:
            self._passed.update(passed)
            lines = [f"📈 Coverage passed {m}%" for m in passed]
            lines[-1] += f": {result.coverage:,} systems ({pct:.1f}%)"
            self._enqueue("\n".join(lines) + "\n" + self._block())

    async def run_finished(self, summary: dict[str, Any]) -> None:
        """Say how the run ended, then wait until every queued message is sent."""
        self._finishing = True
        if summary.get("close_reason") != "pmp_target_met":
            self._enqueue(self._final_text(summary))
        if self._sender is not None and not self._sender.done():
            await self._sender

    def _final_text(self, summary: dict[str, Any]) -> str:
        code = summary.get("exit_code")
        total, coverage, pct = summary.get("total_systems"), summary.get("coverage") or 0, summary.get("coverage_pct")
        if code == 1:
            return f"❌ PMP DCAPI extraction stopped: {summary.get('message')}"
        if summary.get("target_met"):
            return f"🎉 Extraction complete: {coverage:,}/{total:,} systems ({pct:.1f}%)\n" + self._block()
        run = self.run
        cover = f"{pct:.1f}% total coverage, " if pct is not None else ""
        text = (f"✅ Batch complete: {run.systems_extracted:,} systems extracted ({cover}"
                f"{run.patches_extracted:,} patches)\n" + self._block())
        if code == 2:
            text += f"\n⚠️ Partial: {summary.get('message')}"
        return text

    # --- how it is sent --------------------------------------------------------------------------------
    def _enqueue(self, text: str) -> None:
        if self.disabled:
            return
        self._pending.append(text)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._pending and not self.disabled:
            if self._last_sent is not None:
                wait = self.interval - (time.monotonic() - self._last_sent)
                if wait > 0:
                    if self._finishing:
                        logger.info("waiting %.0f s to send the last Slack message (PMP_SLACK_MIN_INTERVAL)", wait,
                                    extra={"event_type": "slack_wait", "wait_s": round(wait, 1)})
                    await sleep(wait)
            batch, self._pending = self._pending, []
            text = "\n\n".join(batch)
            try:
                await self._post(text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…")
            finally:
                # From the post's end, not its start: a post that waited in the downloader (behind
                # paced requests on the same host) arrived late, and the next one, timed from the
                # first's start, reached Slack 0.885 s after it with a 1 s interval
                self._last_sent = time.monotonic()

    async def _post(self, text: str) -> None:
        self._last_sent = time.monotonic()
        request = JsonRequest(
            self.url, data={"text": scrub(text)}, callback=NO_CALLBACK, dont_filter=True,
            headers={"Connection": "close"},
            meta={SIDE_REQUEST: True, "dont_retry": True, "handle_httpstatus_all": True,
                  "download_slot": "slack", "download_timeout": POST_TIMEOUT},
        )
        for attempt in range(1, POST_ATTEMPTS + 1):
            try:
                response = await self._download(request.copy())
                break
            except Exception as exc:  # noqa: BLE001 - a Slack failure must never end the run
                if attempt < POST_ATTEMPTS and retry_post(exc):
                    self.stats.inc_value("pmp/slack/retried")
                    logger.info("Slack post failed before an answer (%s); trying once more", type(exc).__name__,
                                extra={"event_type": "slack_retry"})
                    continue
                self._failed("Slack post failed (%s); extraction continues", type(exc).__name__)
                return
        if 200 <= response.status < 300:
            self.stats.inc_value("pmp/slack/sent")
        elif response.status in (404, 410):
            self.disabled = True
            self._pending.clear()
            self.stats.set_value("pmp/slack/disabled", True)
            self._failed("Slack webhook answered HTTP %d (gone): Slack notifications are off for the rest "
                         "of this run", response.status)
        else:
            self._failed("Slack answered HTTP %d; message dropped, extraction continues", response.status)

    async def _download(self, request: Any) -> Any:
        engine = self.crawler.engine
        slot = getattr(engine, "_slot", None)
        if slot is not None and getattr(slot, "closing", None) is None:
            return await engine.download_async(request)
        return await maybe_deferred_to_future(engine.downloader.fetch(request))

    def _failed(self, message: str, *args: Any) -> None:
        self.stats.inc_value("pmp/slack/failed")
        logger.warning(message, *args, extra={"event_type": "slack_failed"})


def retry_post(exc: BaseException) -> bool:
    """Whether a failed post is tried once more: the connection failed before any answer (a
    pooled connection the receiver closed, a reset, a refused connect). Not a timeout: Slack may
    have the message, and a second one would come a timeout later."""
    return isinstance(exc, (DownloadFailedError, DownloadConnectionRefusedError))
