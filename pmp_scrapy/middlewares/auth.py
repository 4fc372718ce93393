"""TokenMiddleware: injects ``Authorization: Zoho-oauthtoken …`` on every PMP request (cloud,
``PMP_AUTH=oauth``) and owns the token state. The project's download handler
(:mod:`pmp_scrapy.http`) asks it again just before each request is written, after the pace
wait (:meth:`TokenMiddleware.header_at_write`): the token that leaves is the current one, not
the one the request got on entering the downloader.

A fresh token at the start of the run; a proactive refresh once the token is older than
``PMP_TOKEN_REFRESH_RATIO`` of its lifetime (``expires_in``, else ``PMP_TOKEN_DEFAULT_TTL``); a
refresh and an immediate retry on 401 that does not spend one of the page's attempts. Requests
in flight share one refresh. Zoho allows 10 new tokens per refresh token in 10 minutes: past
that budget the middleware waits instead of being locked out. The token call goes through
Scrapy's engine (:mod:`pmp_scrapy.zoho` builds and reads it) with the credentials in the body.

**One token for several crawlers.** The crawlers of one ``scrapy crawl`` command that sweeps
several MSP customers (``-a customer=all``) share one :class:`SharedToken`, which the command
owns and hands to each crawler with :func:`share_token` before it starts: a middleware built
for such a crawler starts from the token the previous crawler left (no new token for the next
customer while it is fresh), and leaves its own there. Without one, the token lives and dies
with the crawl.

Stops the run (exit 1) on three consecutive 401s despite fresh tokens, or a token endpoint that
keeps failing. Reads ``PMP_TOKEN_REFRESH_RATIO``, ``PMP_TOKEN_DEFAULT_TTL``, ``PMP_BACKOFF_BASE``
and the OAuth secrets. Listens to ``spider_closed``. Writes ``pmp/token_refresh/<reason>``,
``pmp/unauthorized`` and ``pmp/token_budget_waits`` stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured

from pmp_scrapy.config import get_config
from pmp_scrapy.credentials import OAUTH_NAMES, require_secrets
from pmp_scrapy.errors import TokenRefreshError
from pmp_scrapy.extensions.shutdown import pause
from pmp_scrapy.logformat import register_secret
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.middlewares.backoff import retry_wait
from pmp_scrapy.middlewares.token_share import SharedToken, share_token, shared_token_of
from pmp_scrapy.middlewares.token_wait import respect_budget
from pmp_scrapy.runstop import stop_run
from pmp_scrapy.token_budget import TokenBudget
from pmp_scrapy.zoho import parse_token_response, token_lifetime, token_request

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from pmp_scrapy.config import PMPConfig

__all__ = ["SharedToken", "TokenMiddleware", "share_token", "shared_token_of", "token_lifetime"]

logger = logging.getLogger(__name__)

TOKEN_TRIES = 3
#: token failures no retry can fix: the run stops at the first
FINAL_CAUSES = frozenset({"bad_credentials", "throttled"})
MAX_CONSECUTIVE_401 = 3


def _retrieved(refresh: asyncio.Future[None]) -> None:
    """Nobody awaits a refresh started at write time: its failure already stopped the run."""
    if not refresh.cancelled():
        refresh.exception()


class TokenMiddleware:
    """See the module docstring."""

    def __init__(self, crawler: Crawler, config: PMPConfig, secrets: dict[str, str],
                 shared: SharedToken | None = None) -> None:
        self.crawler = crawler
        self.config = config
        self._secrets = secrets
        self._token: str | None = None
        self._obtained_at = 0.0
        self._lifetime = config.token_default_ttl
        self._generation = 0
        self._stale_reason: str | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._budget = TokenBudget()
        self._failed_generations: set[int] = set()
        self._consecutive_401 = 0
        self._stopped = False
        self._shared = shared
        if shared is not None:  # the previous crawler's token, if any, and the same budget
            self._budget = shared.budget
            if shared.token is not None:
                self._token, self._obtained_at = shared.token, shared.obtained_at
                self._lifetime, self._generation = shared.lifetime, shared.generation

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        config = get_config(crawler)
        if config.auth != "oauth":
            raise NotConfigured  # silent: PMP_AUTH is apikey, ApiKeyMiddleware authenticates
        secrets = require_secrets(OAUTH_NAMES, crawler.settings)
        for value in secrets.values():
            register_secret(value)  # masked by value in every log line, whatever its shape
        middleware = cls(crawler, config, secrets, shared_token_of(crawler))
        crawler.signals.connect(middleware._closed, signal=signals.spider_closed)
        return middleware

    def _closed(self) -> None:
        self._token = None  # drop the secret as soon as the run is over

    # --- page requests -------------------------------------------------------------------------------
    async def process_request(self, request: Request) -> None:
        if request.meta.get(SIDE_REQUEST):
            return
        if self._stopped:
            raise IgnoreRequest("the run is stopping: authentication failed")
        try:
            token = await self._current_token()
        except TokenRefreshError as exc:
            self._stop("pmp_token_refresh_failed", str(exc), cause=exc.cause)
            raise IgnoreRequest(str(exc)) from None
        if self._stopped:  # the run stopped while this request waited for a token
            raise IgnoreRequest("the run is stopping: authentication failed")
        request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        request.meta["pmp_token_generation"] = self._generation

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if request.meta.get(SIDE_REQUEST):
            return response
        generation = request.meta.get("pmp_token_generation")
        if response.status != 401:
            # Only a token PMP never refused proves the credentials: answers of concurrent requests
            # come back out of order, and a late 2xx of a refused token says nothing new.
            if (200 <= response.status < 300 and generation == self._generation
                    and generation not in self._failed_generations):
                self._consecutive_401 = 0
            return response
        self.crawler.stats.inc_value("pmp/unauthorized")
        if self._stopped:
            raise IgnoreRequest("the run is stopping: authentication failed")
        if generation != self._generation:
            pass  # a newer token exists already: retry with it, this says nothing about the credentials
        elif self._expired():
            # The token outlived its lifetime while the request waited for its download slot:
            # an expiry, not a refusal. Refresh and retry without counting it.
            self._stale_reason = "unauthorized"
        else:
            if generation not in self._failed_generations:  # each fresh token counts once
                self._failed_generations.add(generation)
                self._consecutive_401 += 1
            if self._consecutive_401 >= MAX_CONSECUTIVE_401:
                self._give_up_on_401(request)
            self._stale_reason = "unauthorized"
        retry = request.copy()
        retry.dont_filter = True
        return retry  # same page, at once, same attempt count

    def _give_up_on_401(self, request: Request) -> None:
        logger.critical(
            "%d consecutive 401 responses despite fresh tokens: the OAuth client or its scope is "
            "wrong; stopping the run", MAX_CONSECUTIVE_401,
            extra={"event_type": "run_aborted", "reason": "consecutive_401", "page": request.meta.get("pmp_page")},
        )
        self._stop("pmp_auth_failed", f"{MAX_CONSECUTIVE_401} consecutive 401 responses from PMP despite "
                   "fresh tokens: check the OAuth client, its scope (PatchManagerPlusCloud.PatchMgmt.READ) "
                   "and the data centre")
        raise IgnoreRequest("repeated 401")

    # --- tokens ---------------------------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._token is not None and time.monotonic() - self._obtained_at >= self._lifetime

    def _refresh_reason(self) -> str | None:
        if self._token is None:
            return "run_start" if self._generation == 0 else (self._stale_reason or "unauthorized")
        if self._stale_reason:
            return self._stale_reason
        if time.monotonic() - self._obtained_at > self.config.token_refresh_ratio * self._lifetime:
            return "proactive"
        return None

    # --- write time (pmp_scrapy.http asks, just before a request is written) ---------------------------
    @staticmethod
    def attaches(request: Request) -> bool:
        """Whether ``request`` carries this middleware's token (set in ``process_request``)."""
        return not request.meta.get(SIDE_REQUEST) and "pmp_token_generation" in request.meta

    def header_at_write(self, request: Request) -> bytes | None:
        """The Authorization header for ``request`` as it is written now: the current token
        (whatever token it got on entering the downloader), its generation recorded for the 401
        path; ``None`` (keep the header it has) once the run is over or stopping. A token due for
        refresh starts the refresh (the requests still to enter may be none: the sweep's tail)."""
        if self._token is None or self._stopped:
            return None
        request.meta["pmp_token_generation"] = self._generation
        if self._refreshing is None and self._refresh_reason() == "proactive":
            self._refreshing = asyncio.ensure_future(self._refresh_once("proactive"))
            self._refreshing.add_done_callback(_retrieved)
        return f"Zoho-oauthtoken {self._token}".encode()

    async def _current_token(self) -> str:
        """The token to send now; at most one refresh runs at a time and every caller shares it."""
        while True:
            refreshing = self._refreshing
            if refreshing is None:
                reason = self._refresh_reason()
                if reason is None and self._token is not None:
                    return self._token
                if self._stopped:
                    raise IgnoreRequest("the run is stopping: authentication failed")
                refreshing = self._refreshing = asyncio.ensure_future(self._refresh_once(reason or "run_start"))
            # shield: a cancelled page request must not cancel the refresh the others wait for
            await asyncio.shield(refreshing)

    async def _refresh_once(self, reason: str) -> None:
        # The task clears its own slot before it completes: a waiter must never see a finished
        # refresh still registered (awaiting a done future does not yield: it would spin forever).
        try:
            await self._refresh(reason)
        except TokenRefreshError as exc:  # stopped before the slot clears: no second refresh
            self._stop("pmp_token_refresh_failed", str(exc), cause=exc.cause)
            raise
        finally:
            self._refreshing = None

    async def _refresh(self, reason: str) -> None:
        await respect_budget(self.crawler, self._budget, self._shared)
        age = round(time.monotonic() - self._obtained_at, 1) if self._generation else None
        error: TokenRefreshError | None = None
        for attempt in range(1, TOKEN_TRIES + 1):
            try:
                payload = await self._request_token()
            except TokenRefreshError as exc:
                error = exc
                logger.warning("token refresh try %d of %d failed: %s", attempt, TOKEN_TRIES, exc,
                               extra={"event_type": "token_refresh", "reason": reason, "success": False,
                                      "token_age_s": age, "attempt": attempt, "cause": exc.cause})
                if exc.cause in FINAL_CAUSES:
                    break  # wrong credentials, or Zoho's 10-minute budget spent: another try cannot succeed
                if attempt < TOKEN_TRIES and not await pause(self.crawler, retry_wait(
                        None, None, attempt=attempt, base=self.config.backoff_base, cap=self.config.max_retry_after)):
                    raise IgnoreRequest("the run is stopping: the wait between token tries was cut short")
                continue
            self._budget.minted(time.monotonic())
            self._token = str(payload["access_token"])
            register_secret(self._token)
            self._obtained_at = time.monotonic()
            self._lifetime = token_lifetime(payload, self.config.token_default_ttl)
            self._generation += 1
            self._stale_reason = None
            if self._shared is not None:
                shared = self._shared
                shared.token, shared.obtained_at = self._token, self._obtained_at
                shared.lifetime, shared.generation = self._lifetime, self._generation
            self.crawler.stats.inc_value(f"pmp/token_refresh/{reason}")
            logger.info("token refreshed (%s)", reason, extra={
                "event_type": "token_refresh", "reason": reason, "success": True, "token_age_s": age,
                "lifetime_s": self._lifetime})
            return
        assert error is not None
        logger.error("token refresh failed after %d tries: %s", attempt, error,
                     extra={"event_type": "token_refresh", "reason": reason, "success": False,
                            "token_age_s": age, "cause": error.cause})
        raise error

    async def _request_token(self) -> dict[str, Any]:
        request = token_request(self.config.token_url, self._secrets["PMP_CLIENT_ID"],
                                self._secrets["PMP_CLIENT_SECRET"], self._secrets["PMP_REFRESH_TOKEN"])
        host = urlsplit(self.config.token_url).netloc
        try:
            response = await self.crawler.engine.download_async(request)
        except Exception as exc:  # noqa: BLE001 - any transport failure means unreachable
            raise TokenRefreshError(f"the Zoho accounts server {host} is unreachable ({type(exc).__name__})",
                                    "unreachable") from None
        return parse_token_response(response.status, response.body, host)

    def _stop(self, reason: str, message: str, **fields: Any) -> None:
        if self._stopped:
            return
        self._stopped = True
        stop_run(self.crawler, reason, message, **fields)
