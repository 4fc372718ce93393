"""Token middleware: injects ``Authorization`` on every PMP request and owns the token state.

OAuth (cloud): a fresh token at the start of the run; a proactive refresh once the token is
older than ``PMP_TOKEN_REFRESH_RATIO`` of its lifetime (``expires_in``, else
``PMP_TOKEN_DEFAULT_TTL``); a refresh and an immediate retry on 401 that does not spend one of
the page's attempts. Requests in flight share one refresh. Zoho allows 10 new tokens per refresh
token in 10 minutes: past that budget the middleware waits instead of being locked out. The
token call goes through Scrapy's engine with the credentials in the POST body.

API key (on-premises): the bare key as the header; a 401 ends the run.

Stops the run (exit 1) on three consecutive 401s or a token endpoint that keeps failing.
Writes ``pmp/token_refresh/<reason>``, ``pmp/unauthorized`` and ``pmp/abort_*`` stats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from scrapy.http import FormRequest
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.asyncio import sleep

from pmp_scrapy.config import get_config
from pmp_scrapy.credentials import OAUTH_NAMES, require_secrets
from pmp_scrapy.errors import TokenRefreshError
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.middlewares.backoff import backoff_delay
from pmp_scrapy.runstop import stop_run

if TYPE_CHECKING:
    from typing_extensions import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from pmp_scrapy.config import PMPConfig

logger = logging.getLogger(__name__)

TOKEN_BUDGET = 10  # Zoho: access tokens per refresh token
TOKEN_BUDGET_WINDOW = 600.0  # … per 10 minutes
TOKEN_TRIES = 3
MAX_CONSECUTIVE_401 = 3
MAX_QUEUE_MARGIN = 0.15  # of the token lifetime, at most, added to a token's age for the slot queue


def token_lifetime(payload: dict[str, Any], default: float) -> float:
    """Seconds a token lives: ``expires_in_sec``, else ``expires_in`` (milliseconds in older
    Zoho services, recognisable by their size), else ``default``."""
    for key in ("expires_in_sec", "expires_in"):
        try:
            value = float(payload[key])
        except (KeyError, TypeError, ValueError):
            continue
        if value <= 0:
            continue
        if key == "expires_in" and value > 100_000:
            value /= 1000.0
        return value
    return default


class TokenMiddleware:
    """See the module docstring."""

    def __init__(self, crawler: Crawler, config: PMPConfig, secrets: dict[str, str]) -> None:
        self.crawler = crawler
        self.config = config
        self._secrets = secrets
        self._token: str | None = None
        self._obtained_at = 0.0
        self._lifetime = config.token_default_ttl
        self._generation = 0
        self._stale_reason: str | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._mints: deque[float] = deque()
        self._failed_generations: set[int] = set()
        self._consecutive_401 = 0
        self._stopped = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        config = get_config(crawler)
        if config.auth == "apikey":
            secrets = require_secrets(("PMP_API_KEY",), crawler.settings)
        elif config.demo:
            from pmp_scrapy.simulator import DEMO_CREDENTIALS

            secrets = {"PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"],
                       "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
                       "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"]}
        else:
            secrets = require_secrets(OAUTH_NAMES, crawler.settings)
        middleware = cls(crawler, config, secrets)
        crawler.signals.connect(middleware._closed, signal=signals.spider_closed)
        return middleware

    def _closed(self) -> None:
        self._token = None  # drop the secret as soon as the run is over

    # --- page requests -------------------------------------------------------------------------------
    async def process_request(self, request: Request) -> None:
        if request.meta.get(SIDE_REQUEST):
            return None
        if self._stopped:
            raise IgnoreRequest("the run is stopping: authentication failed")
        if self.config.auth == "apikey":
            request.headers["Authorization"] = self._secrets["PMP_API_KEY"]
            return None
        try:
            token = await self._current_token()
        except TokenRefreshError as exc:
            self._stop("pmp_token_refresh_failed", str(exc), cause=exc.cause)
            raise IgnoreRequest(str(exc)) from None
        request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        request.meta["pmp_token_generation"] = self._generation
        return None

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if request.meta.get(SIDE_REQUEST):
            return response
        if response.status != 401:
            if 200 <= response.status < 300 and request.meta.get("pmp_token_generation") == self._generation:
                self._consecutive_401 = 0
            return response
        self.crawler.stats.inc_value("pmp/unauthorized")
        if self.config.auth == "apikey":
            self._stop("pmp_auth_failed", "the PMP server refused the API key (HTTP 401): check PMP_API_KEY")
            raise IgnoreRequest("API key refused")
        generation = request.meta.get("pmp_token_generation")
        page_401s = int(request.meta.get("pmp_401_count", 0))
        if generation != self._generation:
            pass  # a newer token exists already: retry with it, this says nothing about the credentials
        elif self._expired():
            # The token outlived its lifetime while the request waited for its download slot:
            # an expiry, not a refusal. Refresh and retry without counting it.
            self._stale_reason = "unauthorized"
        else:
            page_401s += 1
            if generation not in self._failed_generations:
                self._failed_generations.add(generation)
                self._consecutive_401 += 1
                self._stale_reason = "unauthorized"
        if self._consecutive_401 >= MAX_CONSECUTIVE_401 or page_401s >= MAX_CONSECUTIVE_401:
            logger.critical(
                "%d consecutive 401 responses despite fresh tokens: the OAuth client or its scope is "
                "wrong; stopping the run", MAX_CONSECUTIVE_401,
                extra={"event_type": "run_aborted", "reason": "consecutive_401", "page": request.meta.get("pmp_page")},
            )
            self._stop("pmp_auth_failed", f"{MAX_CONSECUTIVE_401} consecutive 401 responses from PMP despite "
                       "fresh tokens: check the OAuth client, its scope (PatchManagerPlusCloud.PatchMgmt.READ) and the data centre")
            raise IgnoreRequest("repeated 401")
        retry = request.copy()
        retry.meta["pmp_401_count"] = page_401s
        retry.dont_filter = True
        return retry  # same page, at once, same attempt count

    # --- tokens ---------------------------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._token is not None and time.monotonic() - self._obtained_at >= self._lifetime

    def _refresh_reason(self) -> str | None:
        if self._token is None:
            return "run_start" if self._generation == 0 else (self._stale_reason or "unauthorized")
        if self._stale_reason:
            return self._stale_reason
        age_when_sent = time.monotonic() - self._obtained_at + self._queue_wait()
        if age_when_sent > self.config.token_refresh_ratio * self._lifetime:
            return "proactive"
        return None

    def _queue_wait(self) -> float:
        """How long a request handed to the downloader now may wait for its slot: the token is
        attached here, not when the request leaves, so its age at sending is later than now.
        Capped so that a long AutoThrottle delay cannot make every request mint a token."""
        downloader = getattr(self.crawler.engine, "downloader", None)
        if downloader is None:
            return 0.0
        delay = max((slot.delay for slot in downloader.slots.values()), default=0.0)
        return min(len(downloader.active) * delay, MAX_QUEUE_MARGIN * self._lifetime)

    async def _current_token(self) -> str:
        """The token to send now; at most one refresh runs at a time and every caller shares it."""
        while True:
            refreshing = self._refreshing
            if refreshing is None:
                reason = self._refresh_reason()
                if reason is None and self._token is not None:
                    return self._token
                refreshing = self._refreshing = asyncio.ensure_future(self._refresh_once(reason or "run_start"))
            # shield: a cancelled page request must not cancel the refresh the others wait for
            await asyncio.shield(refreshing)

    async def _refresh_once(self, reason: str) -> None:
        # The task clears its own slot before it completes: a waiter that wakes up must never
        # see a finished refresh still registered (awaiting a done future does not yield, so
        # it would spin forever).
        try:
            await self._refresh(reason)
        finally:
            self._refreshing = None

    async def _respect_budget(self) -> None:
        now = time.monotonic()
        while self._mints and now - self._mints[0] >= TOKEN_BUDGET_WINDOW:
            self._mints.popleft()
        if len(self._mints) >= TOKEN_BUDGET:
            wait = TOKEN_BUDGET_WINDOW - (now - self._mints[0]) + 0.5
            logger.warning("Zoho allows %d tokens per 10 minutes and this run has used them; waiting %.0f s "
                           "rather than be locked out", TOKEN_BUDGET, wait,
                           extra={"event_type": "token_budget_wait", "wait_s": round(wait, 1)})
            self.crawler.stats.inc_value("pmp/token_budget_waits")
            await sleep(wait)

    async def _refresh(self, reason: str) -> None:
        await self._respect_budget()
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
                if attempt < TOKEN_TRIES:
                    await sleep(backoff_delay(self.config.backoff_base, attempt))
                continue
            self._mints.append(time.monotonic())
            self._token = str(payload["access_token"])
            self._obtained_at = time.monotonic()
            self._lifetime = token_lifetime(payload, self.config.token_default_ttl)
            self._generation += 1
            self._stale_reason = None
            self.crawler.stats.inc_value(f"pmp/token_refresh/{reason}")
            logger.info("token refreshed (%s)", reason, extra={
                "event_type": "token_refresh", "reason": reason, "success": True, "token_age_s": age,
                "lifetime_s": self._lifetime})
            return
        assert error is not None
        logger.error("token refresh failed after %d tries: %s", TOKEN_TRIES, error,
                     extra={"event_type": "token_refresh", "reason": reason, "success": False,
                            "token_age_s": age, "cause": error.cause})
        raise error

    async def _request_token(self) -> dict[str, Any]:
        request = FormRequest(
            self.config.token_url,
            formdata={
                "grant_type": "refresh_token",
                "client_id": self._secrets["PMP_CLIENT_ID"],
                "client_secret": self._secrets["PMP_CLIENT_SECRET"],
                "refresh_token": self._secrets["PMP_REFRESH_TOKEN"],
            },
            callback=NO_CALLBACK,
            dont_filter=True,
            meta={SIDE_REQUEST: True, "dont_retry": True, "handle_httpstatus_all": True,
                  "download_slot": "pmp-accounts"},
        )
        try:
            response = await self.crawler.engine.download_async(request)
        except Exception as exc:  # noqa: BLE001 - any transport failure means unreachable
            raise TokenRefreshError(f"the Zoho accounts server is unreachable ({type(exc).__name__})",
                                    "unreachable") from None
        if response.status != 200:
            raise TokenRefreshError(f"the Zoho accounts server answered HTTP {response.status}", "unreachable")
        try:
            payload = json.loads(response.body)
        except ValueError:
            raise TokenRefreshError("the Zoho accounts server answered with something that is not JSON",
                                    "bad_response") from None
        if not isinstance(payload, dict):
            raise TokenRefreshError("the Zoho accounts server answered with unexpected JSON", "bad_response")
        error = payload.get("error")
        if error:
            text = str(error)
            if text.lower() == "access denied":
                raise TokenRefreshError("Zoho refused a new token: Access Denied (too many tokens for this "
                                        "refresh token; Zoho allows 10 per 10 minutes)", "throttled")
            if text.lower() in ("invalid_code", "invalid_client", "invalid_client_secret", "invalid_grant"):
                raise TokenRefreshError(f"Zoho rejected the credentials ({text}): check PMP_CLIENT_ID, "
                                        "PMP_CLIENT_SECRET and PMP_REFRESH_TOKEN", "bad_credentials")
            raise TokenRefreshError(f"Zoho refused a new token ({text[:80]})", "bad_response")
        if not payload.get("access_token"):
            raise TokenRefreshError("the token response has no access_token", "bad_response")
        return payload

    def _stop(self, reason: str, message: str, **fields: Any) -> None:
        if self._stopped:
            return
        self._stopped = True
        stop_run(self.crawler, reason, message, **fields)
