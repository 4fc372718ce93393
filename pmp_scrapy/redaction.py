"""Redaction of personal data and secrets in text that leaves the process (stored response
samples, log lines). One rule set, used everywhere."""

from __future__ import annotations

import ipaddress
import re

SAMPLE_LIMIT = 1024  # bytes, contract: response_sample is at most 1 KB

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![0-9A-Za-z:])")
_SECRETS = re.compile(
    r"(?i)((?:zoho-oauthtoken|bearer)\s+"
    r"|(?:access_token|refresh_token|client_secret|api_key|apikey)[\"']?\s*[:=]\s*[\"']?"
    # a bare "token" only as a parameter or a JSON key, not in prose ("a new token: Access Denied")
    r"|\btoken=|\"token\"\s*:\s*\"?)([^\s\"'&,;<>]+)"
)


def _ip_or_keep(match: re.Match[str], label: str) -> str:
    try:
        ipaddress.ip_address(match.group(0))
    except ValueError:
        return match.group(0)
    return label


def redact(text: str) -> str:
    """Replace emails, IPv4 and IPv6 addresses and credential-looking values."""
    text = _SECRETS.sub(lambda m: m.group(1) + "[redacted]", text)
    text = _EMAIL.sub("[email]", text)
    text = _IPV6.sub(lambda m: _ip_or_keep(m, "[ip]"), text)
    return _IPV4.sub(lambda m: _ip_or_keep(m, "[ip]"), text)


def response_sample(body: bytes | str | None, limit: int = SAMPLE_LIMIT) -> str:
    """A redacted sample of a response body, at most ``limit`` bytes of UTF-8."""
    if not body:
        return ""
    if isinstance(body, bytes):
        # Redact a generous head first, so an address cut at the limit never leaks half.
        text = body[: limit * 4].decode("utf-8", errors="replace")
    else:
        text = body[: limit * 4]
    encoded = redact(text).encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")
