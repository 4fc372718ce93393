"""HTTP answers as values: the ``Reply`` the handler sends and the canned bodies PMP and Zoho use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json;charset=UTF-8"
TEXT_TYPE = "text/plain;charset=UTF-8"
HTML_TYPE = "text/html;charset=UTF-8"

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Timeout"}

UNAUTHORIZED = {"response_code": 401, "error_code": "10002",
                "error_description": "Invalid or expired OAuth token"}
ACCESS_DENIED = {"error": "Access Denied", "error_description":
                 "You have made too many requests continuously. Please try again after some time."}
INVALID_CUSTOMER = {"response_code": 400, "error_code": "10001",
                    "error_description": "Invalid customer name"}
INVALID_PAGING = {"response_code": 400, "error_code": "10001",
                  "error_description": "Invalid page or page limit"}
UNSUPPORTED_ENDPOINT = {"error_code": "10022",
                        "error_description": "API Endpoint is not supported by current server"}
TOO_MANY_REQUESTS = {"response_code": 429, "error_code": "10429",
                     "error_description": "Too many requests"}


@dataclass
class Reply:
    """What to answer: status and body, or ``drop`` to close the connection without an answer.

    ``delay`` is slept in the handler thread before answering; ``systems`` is how many systems'
    worth of work the answer is (systems on a page, catalog entries / 30), which the latency
    model turns into seconds; ``fault`` names the injected fault, for the request record.
    """

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0
    fault: str | None = None
    systems: float = 0.0


def json_reply(status: int, obj: Any, **kw: Any) -> Reply:
    """A JSON reply with raw (unescaped) unicode; ``kw`` are further ``Reply`` fields."""
    return Reply(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), **kw)


def error_html(status: int) -> bytes:
    """An HTML error page carrying an email, an IPv4 and an IPv6 address (redaction bait)."""
    reason = REASONS.get(status, "Error")
    return (f"<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1>"
            "<p>Contact admin@example.com from 10.20.30.40 or 2001:db8::1</p></body></html>"
            ).encode()


def html_reply(status: int, **kw: Any) -> Reply:
    """An HTML error page with this status."""
    return Reply(status, error_html(status), HTML_TYPE, **kw)


def throttled_html() -> bytes:
    """PMP's throttling page, served with HTTP 200."""
    return (b"<html><head><title>Request limit exceeded</title></head><body>"
            b"<h2>You have exceeded the request limit, try later.</h2>"
            b"<p>Too many requests were received from 10.20.30.40 in a short time.</p>"
            b"</body></html>")


def status_error_reply(status: int) -> Reply:
    """What PMP answers with this status: an HTML page for 5xx, 403 and 404, JSON otherwise."""
    if status >= 500 or status in (403, 404):
        return html_reply(status)
    return json_reply(status, {"response_code": status, "error_code": "10001",
                               "error_description": REASONS.get(status, "Error")})
