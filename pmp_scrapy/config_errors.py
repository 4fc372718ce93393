"""A configuration error where an operator looks for it: besides the one line on stderr, a JSON
``config_error`` record in ``LOG_FILE`` (scrapyd and cron keep that file, not the terminal) and a
``dcapi_runs`` row with exit code 1, when the log and database settings themselves are usable."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pmp_scrapy.config import database_url_from_settings, parse_flag
from pmp_scrapy.errors import PMPError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


def record_config_error(settings: BaseSettings, message: str) -> None:
    """Log ``message`` as ``config_error`` to the configured log and record the failed run.
    Never raises: a setting that breaks logging or the database only skips that part."""
    from pmp_scrapy.logformat import install_log_handler, uninstall_log_handler

    try:
        if settings.get("LOG_FILE"):
            install_log_handler(settings)
            logger.error("configuration error: %s", message, extra={"event_type": "config_error"})
            uninstall_log_handler()
    except (PMPError, OSError):
        pass
    try:
        if parse_flag("demo", settings.get("PMP_DEMO", False)):
            return  # a demo never writes to a database it was not made for
        url = database_url_from_settings(settings)
    except PMPError:
        return
    from pmp_scrapy.storage import Store
    from pmp_scrapy.storage.engine import sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return  # no database is created just to say the configuration is wrong
    store = Store(url)
    customer = str(settings.get("PMP_CUSTOMER") or "").strip()
    try:
        store.record_run(customer=customer, snapshot_id=None,
                         started_at=datetime.now(UTC).replace(tzinfo=None),
                         close_reason="pmp_config_error", exit_code=1, pages_committed=0, gaps_opened=0,
                         gaps_resolved=0, mappings_upserted=0, systems_with_mappings=None, coverage_pct=None,
                         message=message[:1000])
    except PMPError:
        pass
    finally:
        store.close()
