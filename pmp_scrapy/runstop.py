"""Stopping a run from a component, with a reason the crawl command maps to an exit code."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: close reasons that mean "fatal", exit code 1
FATAL_REASONS = frozenset({"pmp_auth_failed", "pmp_token_refresh_failed", "pmp_database_error",
                           "pmp_config_error"})


def stop_run(crawler: Crawler, reason: str, message: str, **fields: Any) -> None:
    """Log ``run_aborted`` with the cause, record it in stats and close the spider: what was
    already committed stays, and the checkpoint only covers committed pages."""
    stats = crawler.stats
    if stats.get_value("pmp/abort_reason"):
        return
    stats.set_value("pmp/abort_reason", reason)
    stats.set_value("pmp/abort_message", message)
    logger.error("run aborted: %s", message, extra={"event_type": "run_aborted", "reason": reason, **fields})
    asyncio.ensure_future(crawler.engine.close_spider_async(reason=reason))
