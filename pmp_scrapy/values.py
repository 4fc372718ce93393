"""Parsers for setting values: each takes the setting's name and raw value and returns the
typed value or raises :class:`~pmp_scrapy.errors.ConfigError` with a one-line message that names
the setting ("PMP_PAGE_LIMIT must be a positive integer, got 'abc'")."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pmp_scrapy.errors import ConfigError

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


def integer(name: str, value: Any, *, minimum: int) -> int:
    """A whole number of at least ``minimum``."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return number


def number(name: str, value: Any, *, low: float, high: float | None = None,
            low_inclusive: bool = True) -> float:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        number = None
    ok = number is not None and math.isfinite(number)
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


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive), lower-cased."""
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


def http_url(name: str, value: Any) -> str:
    """An http(s) URL with a host, without its trailing slash."""
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL such as https://patch.manageengine.com, got {value!r}")
    return url


def base_url(value: Any, *, demo: bool) -> str:
    """``PMP_BASE_URL``: required unless demo mode fills it in."""
    if value in (None, ""):
        if demo:
            return ""  # filled in by the demo simulator before the config is read
        raise ConfigError(
            "PMP_BASE_URL is required (for example https://patch.manageengine.com.au); "
            "use -a demo=1 to try the extractor on the built-in simulator"
        )
    return http_url("PMP_BASE_URL", value)


def derive_accounts_url(base_url: str) -> str | None:
    """The Zoho accounts server sharing the PMP host's data-centre domain, or ``None``."""
    host = (urlsplit(base_url).hostname or "").lower()
    if is_loopback_host(host):
        return base_url  # the simulator serves both APIs
    if "manageengine" not in host:
        return None
    suffix = host.split("manageengine", 1)[1]
    return _ZOHO_ACCOUNTS.get(suffix)


def database_url(value: Any) -> str:
    """``PMP_DATABASE_URL`` as SQLAlchemy needs it (default path expanded, ``postgresql+psycopg``).
    A malformed URL is refused without ever repeating its password."""
    if value in (None, ""):
        return "sqlite:///" + str(Path(DEFAULT_DATABASE_PATH).expanduser())
    url = str(value).strip()
    shown = url.split("@")[-1]
    if "://" not in url:
        raise ConfigError(f"PMP_DATABASE_URL must be an SQLAlchemy URL such as sqlite:///path.db, got {shown!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(f"PMP_DATABASE_URL must use sqlite or postgresql, got {scheme!r}")
    if scheme == "sqlite":
        if url.startswith("sqlite:///~"):
            url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser())
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError("PMP_DATABASE_URL is not a valid PostgreSQL URL (the part after :// must be "
                          "user:password@host[:port]/database, with a numeric port; a password holding "
                          "@ : / or % must be percent-encoded)") from None
    if not parts.path.strip("/"):
        raise ConfigError("PMP_DATABASE_URL names no database (postgresql://user@host/DATABASE): "
                          "the tables would land in the server's maintenance database")
    url = "postgresql" + url[len(scheme):] if scheme == "postgres" else url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url
