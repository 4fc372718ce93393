"""Injected failures: which request a ``Fault`` hits and what it answers instead."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .replies import (
    ACCESS_DENIED,
    HTML_TYPE,
    TEXT_TYPE,
    TOO_MANY_REQUESTS,
    UNAUTHORIZED,
    Reply,
    error_html,
    json_reply,
    status_error_reply,
)

HTTP_ERROR_KINDS = {"http_500": 500, "http_502": 502, "http_503": 503, "http_504": 504}
PAGE_FAULT_KINDS = frozenset({
    "http_401", "http_429", "http_status", *HTTP_ERROR_KINDS, "html_200", "empty_200",
    "truncated_200", "wrong_shape", "slow", "drop", "missing_fields", "zero_systems",
})
TOKEN_FAULT_KINDS = frozenset({
    "access_denied", "invalid_code", "http_429", "http_status", *HTTP_ERROR_KINDS,
    "html_200", "empty_200", "slow", "drop",
})
FAULT_MEANINGS = {
    "http_401": "401 JSON (invalid token)",
    "http_429": "429 JSON, Retry-After from retry_after",
    "http_500": "500 HTML error page", "http_502": "502 HTML error page",
    "http_503": "503 HTML error page", "http_504": "504 HTML error page",
    "http_status": "the given status (HTML for 5xx, 403, 404; JSON otherwise)",
    "html_200": "HTTP 200 with an HTML page",
    "empty_200": "HTTP 200 with an empty body",
    "truncated_200": "the genuine body cut in half",
    "wrong_shape": "JSON without the list (odd attempts) or with an object for it (even)",
    "slow": "the genuine answer after delay more seconds",
    "drop": "the connection closed unanswered (after delay seconds)",
    "missing_fields": "patch_id missing on some entries (inventory: no total)",
    "zero_systems": "an empty list (inventory: total 0)",
    "access_denied": "token endpoint: HTTP 200 {\"error\": \"Access Denied\"}",
    "invalid_code": "token endpoint: HTTP 200 {\"error\": \"invalid_code\"}",
}
FAULT_ENDPOINTS = ("page", "inventory", "catalog")
ENTITIES = {"page": "systemreport", "inventory": "computers", "catalog": "patches"}

RealReply = Callable[[str], Reply]


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    Applies to requests for ``page`` (None: any page) of ``endpoint`` ("page", "inventory" or
    "catalog"; for ``token_faults`` page and endpoint are ignored) whose 1-based attempt
    number is in ``attempts`` (or every attempt with ``"all"``). Only requests that passed
    authentication count as attempts. ``customer`` None matches any customer.
    """

    page: int | None = None
    attempts: tuple[int, ...] | str = "all"
    kind: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    status: int | None = None
    body: str | None = None
    customer: str | None = None
    endpoint: str = "page"

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, int):
            attempts = (attempts,)
        elif isinstance(attempts, list):
            attempts = tuple(attempts)
        if attempts != "all" and not (isinstance(attempts, tuple)
                                      and all(isinstance(a, int) and a >= 1 for a in attempts)):
            raise ValueError(f"fault attempts must be 'all' or positive integers, not {self.attempts!r}")
        object.__setattr__(self, "attempts", attempts)
        if self.kind not in PAGE_FAULT_KINDS | TOKEN_FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"fault endpoint must be one of {', '.join(FAULT_ENDPOINTS)}, "
                             f"not {self.endpoint!r}")
        if self.kind == "http_status" and not self.status:
            raise ValueError("fault kind 'http_status' needs a status")

    def matches(self, page: int | None, attempt: int, customer: str | None, endpoint: str) -> bool:
        """Whether this fault applies to this attempt."""
        return ((self.page is None or self.page == page)
                and (self.customer is None or self.customer == customer)
                and self.endpoint == endpoint
                and (self.attempts == "all" or attempt in self.attempts))

    def reply(self, real: RealReply, attempt: int, entity: str = "systemreport") -> Reply:
        """The reply this fault produces. ``real(variant)`` builds the genuine reply, variant
        being "normal", "missing_fields" or "zero_systems"; ``entity`` names the endpoint's
        list (``message_response.<entity>``), for ``wrong_shape``."""
        r = self._reply(real, attempt, entity)
        if self.body is not None and not r.drop:
            r.body = self.body.encode("utf-8")
        r.fault = self.kind
        return r

    def _reply(self, real: RealReply, attempt: int, entity: str) -> Reply:
        kind = self.kind
        if kind in HTTP_ERROR_KINDS or kind == "http_status":
            return status_error_reply(self.status or HTTP_ERROR_KINDS[kind])
        if kind == "http_401":
            return json_reply(401, UNAUTHORIZED)
        if kind == "http_429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return json_reply(429, TOO_MANY_REQUESTS, headers=headers)
        if kind == "access_denied":
            return json_reply(200, ACCESS_DENIED)
        if kind == "invalid_code":
            return json_reply(200, {"error": "invalid_code"})
        if kind == "html_200":
            return Reply(200, error_html(500), HTML_TYPE)
        if kind == "empty_200":
            return Reply(200, b"", TEXT_TYPE)
        if kind == "drop":
            return Reply(0, drop=True, delay=self.delay)
        if kind == "wrong_shape":
            # odd attempts: no message_response at all; even attempts: the list is an object
            if attempt % 2:
                return json_reply(200, {"response_code": 200, "message_type": entity})
            return json_reply(200, {"response_code": 200, "message_type": entity,
                                    "message_response": {entity: {"resource_id": 1}}})
        r = real(kind if kind in ("missing_fields", "zero_systems") else "normal")
        if kind == "truncated_200":
            r.body = r.body[: len(r.body) // 2]
        if kind == "slow":
            r.delay += self.delay
        return r

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (attempts as a list or "all")."""
        d = asdict(self)
        d["attempts"] = self.attempts if self.attempts == "all" else list(self.attempts)
        return d


def transient_faults(count: int, pages: int, seed: int) -> list[Fault]:
    """``count`` transient page faults (503, 502, 429 with Retry-After 1, drop, 0.5 s slow)
    spread over pages 1..``pages``, at most two per page on attempts 1 and 2, so a third
    attempt always succeeds."""
    if count > 2 * pages:
        raise ValueError(f"{count} faults do not fit in {pages} pages at two per page")
    rng = random.Random(f"{seed}:transient")
    slots = [(p, a) for p in range(1, pages + 1) for a in (1, 2)]
    firsts = rng.sample(slots[0::2], min(count, pages))
    seconds = rng.sample(firsts, count - len(firsts))
    chosen = sorted(firsts + [(p, 2) for p, _ in seconds])
    faults = []
    for page, attempt in chosen:
        kind = rng.choice(("http_503", "http_502", "http_429", "drop", "slow"))
        faults.append(Fault(page=page, attempts=(attempt,), kind=kind,
                            retry_after="1" if kind == "http_429" else None,
                            delay=0.5 if kind == "slow" else 0.0))
    return faults
