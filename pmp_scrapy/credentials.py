"""Resolves secrets in the contract's order, first answer wins:

1. an explicit Scrapy setting (``-s PMP_CLIENT_SECRET=…``, a scrapyd ``setting=``);
2. the credentials file named by ``PMP_CREDENTIALS_FILE`` (Scrapy setting or environment
   variable, ``~`` expanded): ``NAME=value`` lines, ``#`` comments and blank lines; refused unless
   it is a regular file owned by the current user with no group/other permission bits;
3. the OS keyring, service ``pmp_scrapy`` (absent on most headless servers);
4. the environment.

Only the token middleware, the Slack notifier and the crawl command's pre-flight ask. A secret
value is never logged and never put in an exception message; only names, paths and sources are.
``pmp-scrapy credentials init`` writes the file (:func:`write_credentials_file`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pmp_scrapy.credentials_file import (
    DEFAULT_FILE,
    FILE_SETTING,
    OAUTH_NAMES,
    SECRET_NAMES,
    check_credentials_file,
    credentials_file_path,
    parse_credentials,
    read_credentials_file,
    values_from_environment,
    values_from_prompt,
    write_credentials_file,
)
from pmp_scrapy.errors import CredentialsError

__all__ = ["DEFAULT_FILE", "FILE_SETTING", "KEYRING_SERVICE", "NO_BACKEND", "OAUTH_NAMES", "SECRET_NAMES", "Lookup",
           "check_credentials_file", "credentials_file_path", "lookup_secrets", "parse_credentials",
           "read_credentials_file", "require_secrets", "resolve_secret", "values_from_environment",
           "values_from_prompt", "write_credentials_file"]

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

KEYRING_SERVICE = "pmp_scrapy"
NO_BACKEND = "no keyring backend available (headless server: use PMP_CREDENTIALS_FILE)"


@dataclass
class Lookup:
    """What the sources answered for some names: ``values`` found (and from which source),
    ``reasons`` (source label, why it gave nothing) for the names still missing."""

    values: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    reasons: list[tuple[str, str]] = field(default_factory=list)

    def missing(self, names: tuple[str, ...]) -> list[str]:
        return [name for name in names if name not in self.values]




# --- the keyring ---------------------------------------------------------------------------------

def _keyring_lookup(names: list[str]) -> tuple[dict[str, str], str | None]:
    """Ask the OS keyring (service :data:`KEYRING_SERVICE`) for ``names``: the values found, and
    why it gave nothing for the rest (``None`` when it simply has no entry)."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null
        from keyring.errors import NoKeyringError
    except ImportError:  # pragma: no cover - keyring is a requirement
        return {}, "the keyring package is not installed"
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # noqa: BLE001 - a backend failing to load (bad PYTHON_KEYRING_BACKEND)
        return {}, f"cannot load a keyring backend ({type(exc).__name__})"
    if isinstance(backend, fail.Keyring | null.Keyring) or (
            isinstance(backend, chainer.ChainerBackend) and not backend.backends):
        return {}, NO_BACKEND
    found: dict[str, str] = {}
    for name in names:
        try:
            value = keyring.get_password(KEYRING_SERVICE, name)
        except NoKeyringError:
            return found, NO_BACKEND
        except Exception as exc:  # noqa: BLE001 - D-Bus gone, locked wallet: backends raise anything
            logger.debug("keyring lookup of %s failed: %s", name, type(exc).__name__)
            return found, f"lookup failed ({type(exc).__name__})"
        if value:
            found[name] = value
    return found, None


# --- resolution ----------------------------------------------------------------------------------

def lookup_secrets(names: tuple[str, ...], settings: BaseSettings | None = None,
                   environ: Mapping[str, str] | None = None) -> Lookup:
    """Ask each source in order for the names still missing. Reads the Scrapy ``settings``,
    ``PMP_CREDENTIALS_FILE``, the keyring and ``environ`` (default ``os.environ``); writes nothing.
    Raises :class:`CredentialsError` when the credentials file is set but refused."""
    environ = os.environ if environ is None else environ
    result = Lookup()

    def take(source: str, found: Mapping[str, str]) -> None:
        for name in result.missing(names):
            if found.get(name):
                result.values[name] = str(found[name])
                result.sources[name] = source

    def absent() -> str:
        return ", ".join(result.missing(names))

    if settings is not None:
        take("setting", {name: settings.get(name) for name in names})
    if result.missing(names):
        result.reasons.append(("setting (-s)", "not given"))
        path = credentials_file_path(settings, environ)
        if path is None:
            result.reasons.append(("credentials file", f"{FILE_SETTING} not set"))
        else:
            take("credentials file", read_credentials_file(path))
            if result.missing(names):
                result.reasons.append(("credentials file", f"{path} has no {absent()}"))
    if result.missing(names):
        found, why = _keyring_lookup(result.missing(names))
        take("keyring", found)
        if result.missing(names):
            result.reasons.append(("keyring", why or f"no {absent()} under service {KEYRING_SERVICE}"))
    if result.missing(names):
        take("environment", environ)
        if result.missing(names):
            result.reasons.append(("environment", f"{absent()} not set"))
    for name, source in result.sources.items():
        logger.debug("credential %s from the %s", name, source)
    return result


def resolve_secret(
    name: str, settings: BaseSettings | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The value of secret ``name`` from the first source that has it (``-s`` setting, credentials
    file, keyring, environment), or ``None``. Raises :class:`CredentialsError` when
    ``PMP_CREDENTIALS_FILE`` names a file it refuses (insecure, missing, malformed)."""
    return lookup_secrets((name,), settings, environ).values.get(name)


def require_secrets(
    names: tuple[str, ...], settings: BaseSettings | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every secret in ``names``, or :class:`CredentialsError` with one line naming the missing
    ones and, for each source tried, why it gave nothing."""
    result = lookup_secrets(names, settings, environ)
    missing = result.missing(names)
    if missing:
        tried = "; ".join(f"{source}: {why}" for source, why in result.reasons)
        raise CredentialsError(f"missing credentials {', '.join(missing)}; tried {tried}")
    return {name: result.values[name] for name in names}
