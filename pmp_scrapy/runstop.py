"""Stopping a run from a component, with a reason the outcome maps to an exit code."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pmp_scrapy.run import find_run

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


def stop_run(crawler: Crawler, reason: str, message: str, **fields: Any) -> None:
    """Record the cause in the run record, log ``run_aborted`` once and close the spider: what
    was already committed stays, and the checkpoint only covers committed pages."""
    run = find_run(crawler)
    if run is not None and not run.abort(reason, message):
        return
    crawler.stats.set_value("pmp/abort_reason", reason)
    logger.error("run aborted: %s", message, extra={"event_type": "run_aborted", "reason": reason, **fields})
    asyncio.ensure_future(crawler.engine.close_spider_async(reason=reason))
