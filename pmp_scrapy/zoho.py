"""The Zoho accounts side of OAuth: the token request, its error taxonomy, token lifetimes and
Zoho's token budget (pure functions and a request builder; no Scrapy engine, no state).

Zoho answers failures with HTTP 200 and an ``error`` field: ``invalid_code`` (and friends) for
credentials that cannot work, ``Access Denied`` when one refresh token asked for more than 10
access tokens in 10 minutes (:mod:`pmp_scrapy.token_budget` keeps to that).
"""

from __future__ import annotations

import json
import math
from typing import Any

from scrapy.http import FormRequest
from scrapy.http.request import NO_CALLBACK

from pmp_scrapy.errors import TokenRefreshError
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.token_budget import TOKEN_BUDGET, TOKEN_BUDGET_WINDOW, TokenBudget

__all__ = ["TOKEN_BUDGET", "TOKEN_BUDGET_WINDOW", "TokenBudget", "parse_token_response", "token_lifetime",
           "token_request"]

BAD_CREDENTIAL_ERRORS = frozenset({"invalid_code", "invalid_client", "invalid_client_secret", "invalid_grant",
                                   "invalid_refresh_token", "unauthorized_client"})


def token_lifetime(payload: dict[str, Any], default: float) -> float:
    """Seconds a token lives: ``expires_in_sec``, else ``expires_in`` (milliseconds in older
    Zoho services, recognisable by their size), else ``default``."""
    for key in ("expires_in_sec", "expires_in"):
        try:
            value = float(payload[key])
        except (KeyError, TypeError, ValueError):
            continue
        if value <= 0 or not math.isfinite(value):
            continue
        if key == "expires_in" and value > 100_000:
            value /= 1000.0
        return value
    return default


def token_request(token_url: str, client_id: str, client_secret: str, refresh_token: str) -> FormRequest:
    """The refresh-token grant as a side request: credentials in the POST body, never the URL."""
    return FormRequest(
        token_url,
        formdata={"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret,
                  "refresh_token": refresh_token},
        callback=NO_CALLBACK,
        dont_filter=True,
        meta={SIDE_REQUEST: True, "dont_retry": True, "handle_httpstatus_all": True,
              "download_slot": "pmp-accounts"},
    )


def parse_token_response(status: int, body: bytes, host: str) -> dict[str, Any]:
    """The token payload, or :class:`TokenRefreshError` with a cause (``bad_credentials``,
    ``throttled``, ``unreachable``, ``bad_response``) and a message naming ``host``."""
    if status != 200:
        raise TokenRefreshError(f"the Zoho accounts server {host} answered HTTP {status}", "unreachable")
    try:
        payload = json.loads(body)
    except ValueError:
        raise TokenRefreshError(f"the Zoho accounts server {host} answered with something that is not JSON",
                                "bad_response") from None
    if not isinstance(payload, dict):
        raise TokenRefreshError(f"the Zoho accounts server {host} answered with unexpected JSON", "bad_response")
    error = payload.get("error")
    if error:
        text = str(error)
        if text.lower() == "access denied":
            raise TokenRefreshError("Zoho refused a new token: Access Denied (too many tokens for this "
                                    "refresh token; Zoho allows 10 per 10 minutes)", "throttled")
        if text.lower() in BAD_CREDENTIAL_ERRORS:
            raise TokenRefreshError(f"Zoho rejected the credentials ({text}): check PMP_CLIENT_ID, "
                                    "PMP_CLIENT_SECRET and PMP_REFRESH_TOKEN", "bad_credentials")
        raise TokenRefreshError(f"Zoho refused a new token ({text[:80]})", "bad_response")
    if not payload.get("access_token"):
        raise TokenRefreshError("the token response has no access_token", "bad_response")
    return payload
