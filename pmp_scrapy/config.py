"""Every ``PMP_*`` setting, declared once in :data:`SETTINGS`, and parsed into one frozen, typed
:class:`PMPConfig`.

From the table come ``settings.py``'s defaults (:func:`project_defaults`), the names the
environment may set (:data:`ENVIRONMENT_SETTINGS`) and every :class:`PMPConfig` field.
Precedence (contract): ``-s NAME=VALUE`` (and spider arguments) win over the environment, which
wins over ``settings.py``. :class:`EnvironmentAddon` folds the environment into the settings once,
before they freeze; secrets are never copied into settings (``scrapy settings --get`` would print
them): :mod:`pmp_scrapy.credentials` reads those itself.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from scrapy.settings import SETTINGS_PRIORITIES

from pmp_scrapy import values as v
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.values import DEMO_DATABASE_URL, derive_accounts_url, is_loopback_host, parse_flag

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

__all__ = ["DEMO_DATABASE_URL", "ENVIRONMENT_SETTINGS", "SETTINGS", "EnvironmentAddon", "PMPConfig", "apply_environment",
           "apply_spider_arguments", "customer_name", "derive_accounts_url", "get_config", "is_loopback_host",
           "load_config", "parse_flag"]


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default, parser and whether the environment may set it. ``field``
    is its :class:`PMPConfig` attribute (``None``: read by another component itself)."""

    name: str
    default: Any
    parse: Callable[[str, Any], Any]
    field: str | None
    env: bool = True


def _text(name: str, value: Any) -> str | None:
    return (str(value).strip() or None) if value is not None else None


def _positive(name: str, value: Any) -> int:
    return v.integer(name, value, minimum=1)


def _non_negative(name: str, value: Any) -> int:
    return v.integer(name, value, minimum=0)


def _seconds(name: str, value: Any) -> float:
    return v.number(name, value, low=0.0)


def _positive_seconds(name: str, value: Any) -> float:
    return v.number(name, value, low=0.0, low_inclusive=False)


def _fraction(name: str, value: Any) -> float:
    return v.number(name, value, low=0.0, high=1.0, low_inclusive=False)


def _optional_positive(name: str, value: Any) -> int | None:
    return None if value in (None, "") else _positive(name, value)


def _catalog_page_limit(name: str, value: Any) -> int:
    # Imported when read: pmp_scrapy.catalog brings the catalog parser (four modules), which
    # every scrapy command would otherwise load with the settings.
    from pmp_scrapy.catalog import catalog_page_limit

    return catalog_page_limit(name, value)


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    return lambda name, value: v.choice(name, value, choices)


SETTINGS: tuple[Setting, ...] = (
    Setting("PMP_BASE_URL", None, _text, "base_url"),
    Setting("PMP_AUTH", "oauth", _one_of("oauth", "apikey"), "auth"),
    Setting("PMP_ACCOUNTS_URL", None, _text, "accounts_url"),
    Setting("PMP_DATABASE_URL", None, lambda name, value: v.database_url(value), "database_url"),
    Setting("PMP_PAGE_LIMIT", 30, _positive, "page_limit"),
    Setting("PMP_CATALOG_PAGE_LIMIT", 1000, _catalog_page_limit, "catalog_page_limit"),
    Setting("PMP_BATCH_PAGES", 50, _non_negative, "batch_pages"),
    Setting("PMP_CHECKPOINT_EVERY", 10, _positive, "checkpoint_every"),
    Setting("PMP_BATCH_BYTES", 8 << 20, _positive, None),  # the pipeline's: pickled rows that end a batch early
    Setting("PMP_COVERAGE_TARGET", 0.95, _fraction, "coverage_target"),
    Setting("PMP_TOTAL_SYSTEMS", None, _optional_positive, "total_systems"),
    Setting("PMP_TOKEN_REFRESH_RATIO", 0.8, _fraction, "token_refresh_ratio"),
    Setting("PMP_TOKEN_DEFAULT_TTL", 56, _positive_seconds, "token_default_ttl"),
    Setting("PMP_MAX_ATTEMPTS", 3, _positive, "max_attempts"),
    Setting("PMP_BACKOFF_BASE", 1.0, _seconds, "backoff_base"),
    Setting("PMP_MAX_RETRY_AFTER", 300, _seconds, "max_retry_after"),
    Setting("PMP_REFRESH_INTERVAL", 86400, _seconds, "refresh_interval"),
    Setting("PMP_MAX_RETIRE_SHARE", 0.2, lambda name, value: v.number(name, value, low=0.0, high=1.0),
            "max_retire_share"),
    Setting("PMP_CUSTOMER", None, _text, "customer"),
    Setting("PMP_SLA_DAYS", "Critical=15,Important=30,Moderate=90,Low=180", _text, None),  # see reporting.sla
    Setting("PMP_RESET", False, parse_flag, "reset", env=False),
    Setting("PMP_DEMO", False, parse_flag, "demo", env=False),
    Setting("POST_EXTRACTION_HOOK", None, _text, "post_extraction_hook"),
    Setting("PMP_HOOK_TIMEOUT", 300, _positive_seconds, "hook_timeout"),
    Setting("PMP_SQLITE_BUSY_TIMEOUT", 15, _seconds, "sqlite_busy_timeout"),  # PMP_DB_TIMEOUT's old name, its default
    Setting("PMP_DB_TIMEOUT", None, lambda n, v: _positive_seconds(n, v) if v not in (None, "") else None, "db_timeout"),
    Setting("PMP_PROGRESS", "auto", _one_of("auto", "on", "off"), "progress"),
    Setting("PMP_SLACK_MIN_INTERVAL", 60, _seconds, "slack_min_interval"),
    # Read by the logging add-on alone (before anything else), see load_log_options.
    Setting("PMP_LOG_FORMAT", "auto", _one_of("auto", "json", "console"), None),
    Setting("PMP_LOG_ROTATE", "daily", _one_of("daily", "off"), None),
    Setting("PMP_LOG_BACKUPS", 14, _non_negative, None),
    # The pace (read by the Pacer extension and the download handler).
    Setting("PMP_MAX_IN_FLIGHT", 16, _positive, None),
    Setting("PMP_RATE_MARGIN", 0.04, lambda name, value: v.number(name, value, low=0.0, high=1.0), None),
    Setting("PMP_PACE_MAX_DELAY", 8.0, _positive_seconds, None),
    # Scrapy's own, validated here so a bad value is one line naming it (at most 4 requests a second).
    Setting("DOWNLOAD_DELAY", 0.25, _seconds, None),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}

#: Settings the environment may override: the table's, and Scrapy's own that operators set.
#: Secrets are deliberately absent.
ENVIRONMENT_SETTINGS: tuple[str, ...] = (*(s.name for s in SETTINGS if s.env), "LOG_FILE", "LOG_LEVEL")


def project_defaults() -> dict[str, Any]:
    """The table's defaults, as ``settings.py`` declares them."""
    return {setting.name: setting.default for setting in SETTINGS}


def read(settings: BaseSettings, name: str) -> Any:
    """One table setting, validated."""
    setting = _BY_NAME[name]
    return setting.parse(name, settings.get(name, setting.default))


def apply_environment(settings: BaseSettings, environ: Mapping[str, str] | None = None) -> None:
    """Copy non-secret settings from the environment into ``settings``, unless the command line
    (or a spider argument) already set them; then derive Scrapy's ``RETRY_TIMES`` from
    ``PMP_MAX_ATTEMPTS`` (attempts include the first)."""
    environ = os.environ if environ is None else environ
    for name in ENVIRONMENT_SETTINGS:
        if name in environ and (settings.getpriority(name) or 0) < SETTINGS_PRIORITIES["spider"]:
            settings.set(name, environ[name], priority="project")
    try:
        attempts = read(settings, "PMP_MAX_ATTEMPTS")
    except ConfigError:
        return  # load_config reports it, naming the setting
    settings.set("RETRY_TIMES", attempts - 1, priority=settings.getpriority("PMP_MAX_ATTEMPTS") or "project")


class EnvironmentAddon:
    """Scrapy add-on that applies :func:`apply_environment` before the settings freeze."""

    def update_settings(self, settings: BaseSettings) -> None:
        apply_environment(settings)


@dataclass(frozen=True)
class PMPConfig:
    """Every validated setting of the table that a component reads through the config."""

    base_url: str
    auth: str
    accounts_url: str
    database_url: str
    page_limit: int
    batch_pages: int
    checkpoint_every: int
    coverage_target: float
    total_systems: int | None
    token_refresh_ratio: float
    token_default_ttl: float
    max_attempts: int
    backoff_base: float
    max_retry_after: float
    refresh_interval: float
    max_retire_share: float
    customer: str | None
    reset: bool
    demo: bool
    post_extraction_hook: str | None
    hook_timeout: float
    sqlite_busy_timeout: float
    progress: str
    slack_min_interval: float
    #: patches per catalog page (/dcapi/threats/patches, at most 1000); 0: no catalog sweep
    catalog_page_limit: int = 1000
    db_timeout: float | None = None  # PMP_DB_TIMEOUT; when set, also sqlite_busy_timeout (one timeout)

    def __post_init__(self) -> None:  # PMP_DB_TIMEOUT wins over its old name
        if self.db_timeout is not None:
            object.__setattr__(self, "sqlite_busy_timeout", self.db_timeout)

    @property
    def token_url(self) -> str:
        """Zoho's token endpoint."""
        return f"{self.accounts_url}/oauth/v2/token"

    @property
    def customer_key(self) -> str:
        """The customer dimension as stored ('' for a single-tenant PMP)."""
        return self.customer or ""


@dataclass(frozen=True)
class LogOptions:
    """How the log is written (read by ``logformat.LoggingAddon`` before anything else)."""

    format: str  # auto | json | console
    rotate: str  # daily | off
    backups: int  # rotated files kept


def load_log_options(settings: BaseSettings) -> LogOptions:
    """Validate ``PMP_LOG_FORMAT``, ``PMP_LOG_ROTATE`` and ``PMP_LOG_BACKUPS`` alone, so logging
    can be set up even when another setting is wrong."""
    return LogOptions(*(read(settings, f"PMP_LOG_{name}") for name in ("FORMAT", "ROTATE", "BACKUPS")))


def database_url_from_settings(settings: BaseSettings) -> str:
    """The validated ``PMP_DATABASE_URL``, without requiring any other setting: ``scrapy status``
    needs no PMP server."""
    return str(read(settings, "PMP_DATABASE_URL"))


def coverage_target_from_settings(settings: BaseSettings) -> float:
    """The validated ``PMP_COVERAGE_TARGET`` (a fraction)."""
    return float(read(settings, "PMP_COVERAGE_TARGET"))


def total_systems_from_settings(settings: BaseSettings) -> int | None:
    """The validated ``PMP_TOTAL_SYSTEMS``, or ``None`` when coverage's denominator is discovered."""
    total = read(settings, "PMP_TOTAL_SYSTEMS")
    return None if total is None else int(total)


def load_config(settings: BaseSettings) -> PMPConfig:
    """Validate the settings into a :class:`PMPConfig`; raise :class:`ConfigError` on the first
    bad value, naming the setting."""
    wanted = {f.name for f in fields(PMPConfig)}
    parsed = {}
    for setting in SETTINGS:  # every one is validated, also those another component reads
        value = read(settings, setting.name)
        if setting.field in wanted:
            parsed[setting.field] = value
    parsed["base_url"] = v.base_url(settings.get("PMP_BASE_URL"), demo=parsed["demo"])
    accounts = parsed["accounts_url"]
    if accounts:
        accounts = v.http_url("PMP_ACCOUNTS_URL", accounts)
    else:
        accounts = derive_accounts_url(parsed["base_url"]) if parsed["base_url"] else ""
        if accounts is None:
            if parsed["auth"] == "oauth":
                raise ConfigError(f"PMP_ACCOUNTS_URL is required: cannot derive the Zoho accounts server "
                                  f"from {parsed['base_url']!r}")
            accounts = ""
    parsed["accounts_url"] = accounts
    return PMPConfig(**parsed)


_configs: weakref.WeakKeyDictionary[Crawler, PMPConfig] = weakref.WeakKeyDictionary()


def get_config(crawler: Crawler) -> PMPConfig:
    """The crawler's :class:`PMPConfig`, parsed once on first use and shared by components."""
    config = _configs.get(crawler)
    if config is None:
        config = load_config(crawler.settings)
        _configs[crawler] = config
    return config


SPIDER_ARGUMENTS: dict[str, str] = {"reset": "PMP_RESET", "demo": "PMP_DEMO", "customer": "PMP_CUSTOMER"}


def apply_spider_arguments(settings: BaseSettings, arguments: Mapping[str, Any]) -> None:
    """Validate ``-a`` arguments and store them as settings (command-line priority).

    Unknown arguments are refused by name, so a typo never silently changes nothing."""
    for name, value in arguments.items():
        if name.startswith("_"):
            continue  # a scheduler's own argument (scrapyd passes _job=<id>), not ours
        if name not in SPIDER_ARGUMENTS:
            known = ", ".join(sorted(SPIDER_ARGUMENTS))
            raise ConfigError(f"unknown spider argument {name!r} (known: {known})")
        value = parse_flag(name, value) if name in ("reset", "demo") else customer_name(value)
        settings.set(SPIDER_ARGUMENTS[name], value, priority="cmdline")


def customer_name(value: Any) -> str:
    """One MSP customer name as a spider argument gives it (exact and case-sensitive on the
    server, so only the surrounding spaces go); :mod:`pmp_scrapy.customers` reads
    ``customer=all`` and comma-separated lists with it, name by name."""
    text = str(value).strip()
    if not text or len(text) > 200 or any(ch in text for ch in "\r\n\t"):
        raise ConfigError(f"customer must be a customer name, got {text!r}")
    return text
