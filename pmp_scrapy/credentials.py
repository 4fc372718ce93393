"""Resolves secrets in the contract's order: an explicit Scrapy setting (``-s``), the OS
keyring (service ``pmp_scrapy``), then the environment. Only the token middleware and the
Slack notifier ask; nothing else holds a secret."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pmp_scrapy.errors import CredentialsError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

KEYRING_SERVICE = "pmp_scrapy"
OAUTH_NAMES = ("PMP_CLIENT_ID", "PMP_CLIENT_SECRET", "PMP_REFRESH_TOKEN")


def _from_keyring(name: str) -> str | None:
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a requirement
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, name)
    except KeyringError:
        return None
    except Exception as exc:  # a broken backend (D-Bus gone, locked wallet) is not fatal
        logger.debug("keyring lookup of %s failed: %s", name, type(exc).__name__)
        return None


def resolve_secret(
    name: str, settings: BaseSettings | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The value of secret ``name``, or ``None`` if it is nowhere."""
    if settings is not None:
        value = settings.get(name)
        if value:
            return str(value)
    value = _from_keyring(name)
    if value:
        return value
    environ = os.environ if environ is None else environ
    return environ.get(name) or None


def require_secrets(
    names: tuple[str, ...], settings: BaseSettings | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Resolve every secret in ``names``; raise :class:`CredentialsError` naming the missing ones."""
    found = {name: resolve_secret(name, settings, environ) for name in names}
    missing = [name for name, value in found.items() if not value]
    if missing:
        raise CredentialsError(
            f"missing credentials: {', '.join(missing)} (set them in the OS keyring under service "
            f"'{KEYRING_SERVICE}' or in the environment)"
        )
    return {name: value for name, value in found.items() if value}
