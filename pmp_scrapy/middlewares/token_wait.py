"""The wait before minting an access token, within Zoho's budget of 10 tokens per 10 minutes per
refresh token (split out of :mod:`pmp_scrapy.middlewares.auth`, whose logger it logs to)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest
from scrapy.utils.asyncio import run_in_thread

from pmp_scrapy.errors import StorageError
from pmp_scrapy.extensions.shutdown import pause
from pmp_scrapy.run import find_run
from pmp_scrapy.token_budget import TOKEN_BUDGET, TokenBudget

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from pmp_scrapy.middlewares.token_share import SharedToken

logger = logging.getLogger("pmp_scrapy.middlewares.auth")


async def respect_budget(crawler: Crawler, budget: TokenBudget, shared: SharedToken | None) -> None:
    """Wait, if need be, until Zoho's budget allows another token: the budget every run of this
    client shares through the database, else this process's own count (``budget``). Writes
    ``pmp/token_budget_waits``; raises IgnoreRequest when a stop of the run cuts the wait short."""
    run = find_run(crawler)
    claim = run.claim_token_mint if run is not None else None
    if claim is None and run is None and shared is not None:
        claim = shared.claim  # a crawler of the command without a run record
    while True:
        if claim is not None:
            try:
                wait = await run_in_thread(claim)
            except StorageError as exc:  # the shared count is unreadable: keep this run's own
                logger.warning("token budget shared through the database unavailable (%s); counting this "
                               "run's tokens only", exc, extra={"event_type": "token_budget_unshared"})
                claim = None
                continue
        else:
            wait = budget.wait_before_next(time.monotonic())
        if wait <= 0:
            return
        logger.warning("Zoho allows %d tokens per 10 minutes and runs of this client have used them; "
                       "waiting %.0f s rather than be locked out", TOKEN_BUDGET, wait,
                       extra={"event_type": "token_budget_wait", "wait_s": round(wait, 1)})
        crawler.stats.inc_value("pmp/token_budget_waits")
        if not await pause(crawler, wait):  # a stop of the run ends the wait
            raise IgnoreRequest("the run is stopping: the token budget wait was cut short")
        if claim is None:
            return
