"""Logging: one structured record per line, for the project's events and Scrapy's own.

How it hooks into Scrapy: ``settings.py`` sets ``LOG_INSTALL_ROOT_HANDLER = False`` so Scrapy's
CLI installs no root handler of its own, and :class:`LoggingAddon` (in ``ADDONS``, after the
environment add-on) installs ours from the crawler's final settings, before any component is
built. Every record of every logger (``pmp_scrapy.*``, ``scrapy.*``, ``twisted``, warnings) goes
through that one handler. Scrapy prints two lines ("Scrapy started", versions) before any add-on
runs; the add-on repeats them once through the new handler.

Reads ``LOG_FILE``, ``LOG_ENABLED``, ``LOG_LEVEL``, ``LOG_FILE_APPEND``, ``LOG_ENCODING``,
``PMP_LOG_FORMAT`` (auto: console on a terminal, JSON otherwise; a file is never a terminal),
``PMP_LOG_ROTATE`` (daily: rotate ``LOG_FILE`` at midnight UTC) and ``PMP_LOG_BACKUPS``.
The log file is created mode 0600.

JSON lines carry ``timestamp`` (UTC, milliseconds, ``Z``), ``level``, ``logger``,
``event_type`` (from ``extra``, else derived from the logger), ``snapshot_id`` (and
``customer``) from :func:`set_log_context`, ``message`` and every ``extra`` field. Text is
redacted (:func:`pmp_scrapy.redaction.redact`) and registered secrets (:func:`register_secret`,
e.g. the Slack webhook) are masked in every line, whatever the format.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging.handlers import TimedRotatingFileHandler
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from scrapy.logformatter import LogFormatter

from pmp_scrapy.config import load_log_options
from pmp_scrapy.masking import MASK, mask_secrets, register_secret, scrub

__all__ = ["MASK", "LoggingAddon", "PMPLogFormatter", "console", "install_log_handler", "mask_secrets",
           "register_secret", "scrub", "set_log_context", "uninstall_log_handler"]

if TYPE_CHECKING:
    from rich.console import Console
    from scrapy.settings import BaseSettings

_OBJECT_EXTRAS = ("crawler", "spider", "item", "response")  # objects Scrapy passes in ``extra``: never logged


@dataclass
class _LogState:
    """What logging keeps for the process: the installed root handler, the run's context fields,
    the shared console, and whether Scrapy's start-up lines were repeated."""

    context: dict[str, Any] = field(default_factory=dict)
    handler: logging.Handler | None = None
    console: Console | None = None
    announced: bool = False


_state = _LogState()


def set_log_context(**values: Any) -> None:
    """Fields added to every structured log record of this run (``snapshot_id``, ``customer``)."""
    _state.context.update(values)


def _event_type(record: logging.LogRecord) -> str:
    name = record.name
    if name == "scrapy" or name.startswith("scrapy."):
        return "scrapy"
    if name == "twisted" or name.startswith("twisted."):
        return "twisted"
    if name == "py.warnings":
        return "python_warning"
    return "log"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonLogFormatter(JsonFormatter):
    """One JSON object per record (python-json-logger), in the spec's log schema."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=[*RESERVED_ATTRS, *_OBJECT_EXTRAS, "taskName", "event_type",
                                         "snapshot_id", "customer", "summary_line"])

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        log_data["timestamp"] = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["event_type"] = getattr(record, "event_type", None) or _event_type(record)
        log_data["snapshot_id"] = getattr(record, "snapshot_id", _state.context.get("snapshot_id"))
        customer = getattr(record, "customer", _state.context.get("customer"))
        if customer:
            log_data["customer"] = customer
        log_data["message"] = record.message
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: _clean(value) for key, value in log_data.items()}

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class ConsoleLogFormatter(logging.Formatter):
    """Human-readable lines, redacted and masked like the JSON ones."""

    def __init__(self, *, with_time: bool = True) -> None:
        fmt = "%(asctime)s %(levelname)-8s %(name)s: %(message)s" if with_time else "%(message)s"
        super().__init__(fmt=fmt, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class TerminalFilter(logging.Filter):
    """What a person at a terminal reads: warnings and errors, and the project's own few
    milestones (batch start, new snapshot, a tenant change). Scrapy's start-up lines and stats
    dump, and per-page progress (the bar shows it), stay out unless ``LOG_LEVEL=DEBUG``; a log
    file and JSON output keep everything."""

    CHATTY_EVENTS = frozenset({"extraction_progress", "checkpoint_saved", "token_refresh", "gap_resolved",
                               "demo_started", "views_created", "hook_started", "hook_finished", "hook_skipped",
                               "catalog_finished", "catalog_page_committed"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if not record.name.startswith("pmp_scrapy"):
            return False
        if getattr(record, "summary_line", False):
            return False  # the crawl command prints the summary itself
        return getattr(record, "event_type", None) not in self.CHATTY_EVENTS


class _PrivateFileMixin:
    """Creates the log file mode 0600 (and tightens an existing one)."""

    baseFilename: str
    mode: str
    encoding: str | None
    errors: str | None

    def _open(self):  # type: ignore[no-untyped-def]
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in self.mode else os.O_TRUNC)
        fd = os.open(self.baseFilename, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
        except OSError:  # not ours to change (another user's file): still log
            pass
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


class PrivateFileHandler(_PrivateFileMixin, logging.FileHandler):
    """``LOG_FILE`` without rotation (``PMP_LOG_ROTATE=off``: logrotate's job)."""


class PrivateDailyFileHandler(_PrivateFileMixin, TimedRotatingFileHandler):
    """``LOG_FILE`` rotated at midnight UTC. A short cron run rotates on its first line when the
    file was last written on an earlier day (the handler starts from the file's mtime)."""


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, so a live progress display (which
    redirects stderr) keeps its bar below the log lines."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def console() -> Console:
    """The process's rich console on stderr, shared by the console log handler and the progress
    bar so that log lines print above the bar."""
    if _state.console is None:
        from rich.console import Console

        _state.console = Console(stderr=True)
    return _state.console


def build_handler(settings: BaseSettings) -> logging.Handler:
    """The root handler the settings describe (raises ``ConfigError`` on a bad PMP_LOG_* value)."""
    options = load_log_options(settings)
    filename = settings.get("LOG_FILE")
    handler: logging.Handler
    if filename:
        encoding = settings.get("LOG_ENCODING") or "utf-8"
        if options.rotate == "daily":
            handler = PrivateDailyFileHandler(filename, when="midnight", utc=True,
                                              backupCount=options.backups, encoding=encoding)
        else:
            mode = "a" if settings.getbool("LOG_FILE_APPEND", True) else "w"
            handler = PrivateFileHandler(filename, mode=mode, encoding=encoding)
        use_json = options.format != "console"
    elif settings.getbool("LOG_ENABLED", True):
        tty = sys.stderr.isatty()
        use_json = options.format == "json" or (options.format == "auto" and not tty)
        if not use_json and tty:
            from rich.logging import RichHandler

            handler = RichHandler(console=console(), show_path=False, markup=False,
                                  rich_tracebacks=False, log_time_format="%H:%M:%S")
            handler.setFormatter(ConsoleLogFormatter(with_time=False))
            level = settings.get("LOG_LEVEL", "DEBUG")
            handler.setLevel(level)
            if str(level).upper() != "DEBUG":
                handler.addFilter(TerminalFilter())
            return handler
        handler = StderrHandler()
    else:
        return logging.NullHandler()
    handler.setFormatter(JsonLogFormatter() if use_json else ConsoleLogFormatter())
    handler.setLevel(settings.get("LOG_LEVEL", "DEBUG"))
    return handler


def install_log_handler(settings: BaseSettings) -> logging.Handler:
    """Replace the previously installed root handler (ours or none) with :func:`build_handler`'s."""
    handler = build_handler(settings)
    uninstall_log_handler()
    logging.root.setLevel(logging.NOTSET)
    logging.root.addHandler(handler)
    _state.handler = handler
    return handler


def uninstall_log_handler() -> None:
    """Remove and close the handler :func:`install_log_handler` installed (tests, embedding)."""
    if _state.handler is not None:
        logging.root.removeHandler(_state.handler)
        _state.handler.close()
        _state.handler = None


class LoggingAddon:
    """Scrapy add-on installing the structured root handler (see the module docstring).
    Starts each crawl with an empty log context."""

    def update_settings(self, settings: BaseSettings) -> None:
        _state.context.clear()
        install_log_handler(settings)
        if not _state.announced:
            _state.announced = True
            from scrapy.utils.log import log_scrapy_info

            log_scrapy_info(settings)  # type: ignore[arg-type]  # reads only, any settings object will do


class PMPLogFormatter(LogFormatter):
    """Never logs item contents (a page item holds whole patch inventories) and masks
    registered secrets in request URLs (a Slack webhook URL is a secret)."""

    def crawled(self, request: Any, response: Any, spider: Any) -> dict[str, Any]:  # type: ignore[override]
        result: dict[str, Any] = dict(super().crawled(request, response, spider))
        args: dict[str, Any] = dict(result.get("args") or {})
        for key in ("request", "referer"):
            if key in args and args[key] is not None:
                args[key] = mask_secrets(str(args[key]))
        result["args"] = args
        return result  # type: ignore[return-value]

    def scraped(self, item: Any, response: Any, spider: Any) -> None:  # type: ignore[override]
        return None

    def dropped(self, item: Any, exception: BaseException, response: Any, spider: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"level": 30, "msg": "Dropped item: %(exception)s", "args": {"exception": exception}}
