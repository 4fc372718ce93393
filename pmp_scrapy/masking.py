"""The secret registry: values (client secret, refresh token, API key, every access token issued,
the Slack webhook, the database password) masked *by value* in every line that leaves the
process, whatever shape they appear in; :func:`scrub` adds the pattern rules of
:mod:`pmp_scrapy.redaction` (emails, IP addresses, credential-looking values)."""

from __future__ import annotations

import json
from urllib.parse import quote

from pmp_scrapy.redaction import redact

MASK = "[secret]"
MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words


class SecretRegistry:
    """The values to mask, and the forms they take in URLs and JSON; and the operator's own hosts
    (the PMP server, the accounts server, the database), which log lines may name: redaction of
    addresses is for third-party data in responses, not for the operator's own configuration."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self.operator_hosts: set[str] = set()

    def register(self, value: str | None) -> None:
        """Mask ``value`` (and its JSON-escaped and URL-encoded forms) from now on."""
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote(value, safe="/:")}
        if forms - self._values:
            self._values |= forms
            self._ordered = sorted(self._values, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every registered value replaced by ``[secret]`` (longest first)."""
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __contains__(self, value: object) -> bool:
        return value in self._values


#: The process's registry: a crawl process handles one tenant's secrets.
REGISTRY = SecretRegistry()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line, message and stored sample from now on."""
    REGISTRY.register(value)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret masked."""
    return REGISTRY.mask(text)


def register_operator_host(host: str | None) -> None:
    """Let log lines name ``host`` (an address the operator configured) instead of ``[ip]``."""
    if host:
        REGISTRY.operator_hosts.add(host)


def scrub(text: str) -> str:
    """Redaction and secret masking: what any log line goes through before it leaves the process.
    The operator's own hosts stay readable ("connection to server at 10.0.0.5 refused")."""
    kept: dict[str, str] = {}
    for index, host in enumerate(sorted(REGISTRY.operator_hosts, key=len, reverse=True)):
        if host in text:
            placeholder = f"\x00host{index}\x00"
            kept[placeholder] = host
            text = text.replace(host, placeholder)
    text = mask_secrets(redact(text))
    for placeholder, host in kept.items():
        text = text.replace(placeholder, host)
    return text
