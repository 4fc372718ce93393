"""Parses and validates every ``PMP_*`` value into one frozen, typed :class:`PMPConfig`.

Precedence (contract): ``-s NAME=VALUE`` (and spider arguments) win over the environment,
which wins over ``settings.py``. :class:`EnvironmentAddon` folds the environment into the
settings once, before they freeze; secrets are never copied into settings (``scrapy settings
--get`` would print them): :mod:`pmp_scrapy.credentials` reads those itself.
"""

from __future__ import annotations

import ipaddress
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy.settings import SETTINGS_PRIORITIES

from pmp_scrapy.errors import ConfigError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: Settings the environment may override. Secrets are deliberately absent.
ENVIRONMENT_SETTINGS: tuple[str, ...] = (
    "PMP_BASE_URL",
    "PMP_AUTH",
    "PMP_ACCOUNTS_URL",
    "PMP_DATABASE_URL",
    "PMP_PAGE_LIMIT",
    "PMP_BATCH_PAGES",
    "PMP_CHECKPOINT_EVERY",
    "PMP_COVERAGE_TARGET",
    "PMP_TOTAL_SYSTEMS",
    "PMP_TOKEN_REFRESH_RATIO",
    "PMP_TOKEN_DEFAULT_TTL",
    "PMP_MAX_ATTEMPTS",
    "PMP_BACKOFF_BASE",
    "PMP_MAX_RETRY_AFTER",
    "PMP_CUSTOMER",
    "PMP_LOG_FORMAT",
    "PMP_PROGRESS",
    "PMP_LOG_ROTATE",
    "PMP_LOG_BACKUPS",
    "PMP_SLACK_MIN_INTERVAL",
    "PMP_HOOK_TIMEOUT",
    "PMP_SQLITE_BUSY_TIMEOUT",
    "POST_EXTRACTION_HOOK",
    "DOWNLOAD_DELAY",
    "LOG_FILE",
    "LOG_LEVEL",
)

DEFAULT_DATABASE_PATH = "~/.maia/databases/intelligence/pmp_config.db"
DEMO_DATABASE_URL = "sqlite:///pmp_demo.db"

_ZOHO_ACCOUNTS = {
    ".com": "https://accounts.zoho.com",
    ".eu": "https://accounts.zoho.eu",
    ".in": "https://accounts.zoho.in",
    ".com.au": "https://accounts.zoho.com.au",
    ".cn": "https://accounts.zoho.com.cn",
    ".jp": "https://accounts.zoho.jp",
    ".uk": "https://accounts.zoho.uk",
    ".ca": "https://accounts.zohoone.ca",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def apply_environment(settings: BaseSettings, environ: Mapping[str, str] | None = None) -> None:
    """Copy non-secret contract settings from the environment into ``settings``, unless the
    command line (or a spider argument) already set them."""
    environ = os.environ if environ is None else environ
    for name in ENVIRONMENT_SETTINGS:
        if name not in environ:
            continue
        if (settings.getpriority(name) or 0) >= SETTINGS_PRIORITIES["spider"]:
            continue
        settings.set(name, environ[name], priority="project")


class EnvironmentAddon:
    """Scrapy add-on that applies :func:`apply_environment` before the settings freeze."""

    def update_settings(self, settings: BaseSettings) -> None:
        apply_environment(settings)


def parse_flag(name: str, value: Any) -> bool:
    """Parse a boolean setting or spider argument, naming it in the error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1/0, true/false or yes/no, got {value!r}")


def _integer(name: str, value: Any, *, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return number


def _number(name: str, value: Any, *, low: float, high: float | None = None,
            low_inclusive: bool = True) -> float:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        number = None
    ok = number is not None and number == number  # NaN check
    if ok:
        assert number is not None
        ok = number >= low if low_inclusive else number > low
        if high is not None:
            ok = ok and number <= high
    if not ok:
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        if not low_inclusive:
            bound = f"greater than {low:g}" + (f" and at most {high:g}" if high is not None else "")
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")
    assert number is not None
    return number


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return text


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(name: str, value: Any) -> str:
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL such as https://patch.manageengine.com, got {value!r}")
    return url


def _base_url(value: Any, *, demo: bool) -> str:
    if value in (None, ""):
        if demo:
            return ""  # filled in by the demo simulator before the config is read
        raise ConfigError(
            "PMP_BASE_URL is required (for example https://patch.manageengine.com.au); "
            "use -a demo=1 to try the extractor on the built-in simulator"
        )
    return _http_url("PMP_BASE_URL", value)


def derive_accounts_url(base_url: str) -> str | None:
    """The Zoho accounts server sharing the PMP host's data-centre domain, or ``None``."""
    host = (urlsplit(base_url).hostname or "").lower()
    if is_loopback_host(host):
        return base_url  # the simulator serves both APIs
    if "manageengine" not in host:
        return None
    suffix = host.split("manageengine", 1)[1]
    return _ZOHO_ACCOUNTS.get(suffix)


def _database_url(value: Any) -> str:
    if value in (None, ""):
        return "sqlite:///" + str(Path(DEFAULT_DATABASE_PATH).expanduser())
    url = str(value).strip()
    if "://" not in url:
        raise ConfigError(f"PMP_DATABASE_URL must be an SQLAlchemy URL such as sqlite:///path.db, got {url.split('@')[-1]!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(f"PMP_DATABASE_URL must use sqlite or postgresql, got {scheme!r}")
    if scheme == "sqlite" and url.startswith("sqlite:///~"):
        url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser())
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@dataclass(frozen=True)
class PMPConfig:
    """Every validated ``PMP_*`` value of one run."""

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
    download_delay: float
    customer: str | None
    reset: bool
    demo: bool
    post_extraction_hook: str | None
    hook_timeout: float
    sqlite_busy_timeout: float
    log_format: str
    progress: str
    log_rotate: str
    log_backups: int
    slack_min_interval: float

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
    return LogOptions(
        format=_choice("PMP_LOG_FORMAT", settings.get("PMP_LOG_FORMAT", "auto"), ("auto", "json", "console")),
        rotate=_choice("PMP_LOG_ROTATE", settings.get("PMP_LOG_ROTATE", "daily"), ("daily", "off")),
        backups=_integer("PMP_LOG_BACKUPS", settings.get("PMP_LOG_BACKUPS", 14), minimum=0),
    )


def database_url_from_settings(settings: BaseSettings) -> str:
    """The validated ``PMP_DATABASE_URL`` (default path expanded), without requiring any other
    setting: ``scrapy status`` needs no PMP server."""
    return _database_url(settings.get("PMP_DATABASE_URL"))


def coverage_target_from_settings(settings: BaseSettings) -> float:
    """The validated ``PMP_COVERAGE_TARGET`` (a fraction)."""
    return _number("PMP_COVERAGE_TARGET", settings.get("PMP_COVERAGE_TARGET", 0.95), low=0.0, high=1.0,
                   low_inclusive=False)


def total_systems_from_settings(settings: BaseSettings) -> int | None:
    """The validated ``PMP_TOTAL_SYSTEMS``, or ``None`` when coverage's denominator is discovered."""
    total = settings.get("PMP_TOTAL_SYSTEMS")
    return None if total in (None, "") else _integer("PMP_TOTAL_SYSTEMS", total, minimum=1)


def load_config(settings: BaseSettings) -> PMPConfig:
    """Validate the settings into a :class:`PMPConfig`; raise :class:`ConfigError` on the first
    bad value, naming the setting."""
    demo = parse_flag("demo", settings.get("PMP_DEMO", False))
    base_url = _base_url(settings.get("PMP_BASE_URL"), demo=demo)
    auth = _choice("PMP_AUTH", settings.get("PMP_AUTH", "oauth"), ("oauth", "apikey"))
    accounts = settings.get("PMP_ACCOUNTS_URL")
    if accounts:
        accounts = _http_url("PMP_ACCOUNTS_URL", accounts)
    else:
        accounts = derive_accounts_url(base_url) if base_url else ""
        if accounts is None:
            if auth == "oauth":
                raise ConfigError(
                    f"PMP_ACCOUNTS_URL is required: cannot derive the Zoho accounts server from {base_url!r}"
                )
            accounts = ""
    customer = settings.get("PMP_CUSTOMER")
    customer = str(customer).strip() or None if customer is not None else None
    hook = settings.get("POST_EXTRACTION_HOOK")
    logs = load_log_options(settings)
    return PMPConfig(
        base_url=base_url,
        auth=auth,
        accounts_url=accounts,
        database_url=database_url_from_settings(settings),
        page_limit=_integer("PMP_PAGE_LIMIT", settings.get("PMP_PAGE_LIMIT", 30), minimum=1),
        batch_pages=_integer("PMP_BATCH_PAGES", settings.get("PMP_BATCH_PAGES", 50), minimum=0),
        checkpoint_every=_integer("PMP_CHECKPOINT_EVERY", settings.get("PMP_CHECKPOINT_EVERY", 10), minimum=1),
        coverage_target=coverage_target_from_settings(settings),
        total_systems=total_systems_from_settings(settings),
        token_refresh_ratio=_number("PMP_TOKEN_REFRESH_RATIO", settings.get("PMP_TOKEN_REFRESH_RATIO", 0.8), low=0.0, high=1.0, low_inclusive=False),
        token_default_ttl=_number("PMP_TOKEN_DEFAULT_TTL", settings.get("PMP_TOKEN_DEFAULT_TTL", 56), low=0.0, low_inclusive=False),
        max_attempts=_integer("PMP_MAX_ATTEMPTS", settings.get("PMP_MAX_ATTEMPTS", 3), minimum=1),
        backoff_base=_number("PMP_BACKOFF_BASE", settings.get("PMP_BACKOFF_BASE", 1.0), low=0.0),
        max_retry_after=_number("PMP_MAX_RETRY_AFTER", settings.get("PMP_MAX_RETRY_AFTER", 300), low=0.0),
        download_delay=_number("DOWNLOAD_DELAY", settings.get("DOWNLOAD_DELAY", 0.25), low=0.0),
        customer=customer,
        reset=parse_flag("reset", settings.get("PMP_RESET", False)),
        demo=demo,
        post_extraction_hook=str(hook).strip() if hook else None,
        hook_timeout=_number("PMP_HOOK_TIMEOUT", settings.get("PMP_HOOK_TIMEOUT", 300), low=0.0, low_inclusive=False),
        sqlite_busy_timeout=_number("PMP_SQLITE_BUSY_TIMEOUT", settings.get("PMP_SQLITE_BUSY_TIMEOUT", 15), low=0.0),
        log_format=logs.format,
        progress=_choice("PMP_PROGRESS", settings.get("PMP_PROGRESS", "auto"), ("auto", "on", "off")),
        log_rotate=logs.rotate,
        log_backups=logs.backups,
        slack_min_interval=_number("PMP_SLACK_MIN_INTERVAL", settings.get("PMP_SLACK_MIN_INTERVAL", 60), low=0.0),
    )


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
        if name in ("reset", "demo"):
            value = parse_flag(name, value)
        else:
            value = str(value).strip()
            if not value or len(value) > 200 or any(ch in value for ch in "\r\n\t"):
                raise ConfigError(f"customer must be a customer name, got {value!r}")
        settings.set(SPIDER_ARGUMENTS[name], value, priority="cmdline")
