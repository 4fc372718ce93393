"""Redaction of personal data and secrets in text that leaves the process (stored response
samples, log lines). One rule set, used everywhere; :func:`response_sample` also masks the
registered secrets by value and makes the sample storable. Reads and writes nothing."""

from __future__ import annotations

import ipaddress
import re

from pmp_scrapy.values_guard import storable_text

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
    """A sample of a response body for storage and logs, at most ``limit`` bytes of UTF-8:
    registered secrets masked by value (:mod:`pmp_scrapy.masking`: a 400 body may echo the access
    token), then emails, IP addresses and credential-looking values redacted, then made storable
    (:func:`pmp_scrapy.values_guard.storable_text`: no NUL, no lone surrogate)."""
    if not body:
        return ""
    # Clean a generous head, and a longer one if masking shrank it below twice the limit, so
    # that a secret or an address cut at the end of the head never shows in the sample.
    window = limit * 4
    while True:
        head = body[:window]
        text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
        cleaned = _clean(text)
        if len(body) <= window or len(cleaned) >= 2 * limit:
            break
        window *= 4
    encoded = cleaned.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def _clean(text: str) -> str:
    """``text`` masked, redacted and storable (no length limit)."""
    from pmp_scrapy.masking import mask_secrets  # masking builds on this module's redact

    return storable_text(redact(mask_secrets(text)), limit=len(text) + 1)
