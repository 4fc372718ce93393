"""Logging: run context for log records and a LOG_FORMATTER that keeps items out of logs."""

from __future__ import annotations

from typing import Any

from scrapy.logformatter import LogFormatter

_context: dict[str, Any] = {}


def set_log_context(**values: Any) -> None:
    """Fields added to every structured log record of this run (``snapshot_id``, ``customer``)."""
    _context.update(values)


def log_context() -> dict[str, Any]:
    """The current run context."""
    return dict(_context)


class PMPLogFormatter(LogFormatter):
    """Never logs item contents: a page item holds whole patch inventories."""

    def scraped(self, item: Any, response: Any, spider: Any) -> None:  # type: ignore[override]
        return None

    def dropped(self, item: Any, exception: BaseException, response: Any, spider: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"level": 30, "msg": "Dropped item: %(exception)s", "args": {"exception": exception}}
