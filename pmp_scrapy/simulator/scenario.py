"""Scenarios: what the simulated PMP estate looks like and which faults it injects."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .data import DatasetSpec

DEMO_CREDENTIALS: dict[str, str] = {
    "client_id": "1000.DEMOCLIENT",
    "client_secret": "demo-client-secret-0000",
    "refresh_token": "1000.demo-refresh-token.0000",
    "api_key": "DEMO-API-KEY-0000",
}

JSON_TYPE = "application/json;charset=UTF-8"
HTTP_ERROR_KINDS = {"http_500": 500, "http_502": 502, "http_503": 503, "http_504": 504}
PAGE_FAULT_KINDS = frozenset({
    "http_401", "http_429", "http_status", *HTTP_ERROR_KINDS, "html_200", "empty_200",
    "truncated_200", "wrong_shape", "slow", "drop", "missing_fields", "zero_systems",
})
TOKEN_FAULT_KINDS = frozenset({
    "access_denied", "invalid_code", "http_429", "http_status", *HTTP_ERROR_KINDS,
    "html_200", "empty_200", "slow", "drop",
})
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Temporarily Unavailable", 504: "Gateway Timeout"}


def error_html(status: int) -> bytes:
    """An HTML error page carrying an email, an IPv4 and an IPv6 address (redaction bait)."""
    reason = _REASONS.get(status, "Error")
    return (f"<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1>"
            "<p>Contact admin@example.com from 10.20.30.40 or 2001:db8::1</p></body></html>"
            ).encode()


@dataclass
class Reply:
    """What to answer: status and body, or ``drop`` to close the connection silently."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0
    fault: str | None = None


def json_reply(status: int, obj: Any, **kw: Any) -> Reply:
    """A JSON reply with raw (unescaped) unicode."""
    return Reply(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), **kw)


UNAUTHORIZED = {"response_code": 401, "error_code": "10002",
                "error_description": "Invalid or expired OAuth token"}
ACCESS_DENIED = {"error": "Access Denied", "error_description":
                 "You have made too many requests continuously. Please try again after some time."}


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    Applies to requests for ``page`` (None: any page) of ``endpoint`` ("page" or
    "inventory"; for ``token_faults`` page and endpoint are ignored) whose 1-based attempt
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
        if self.endpoint not in ("page", "inventory"):
            raise ValueError(f"fault endpoint must be 'page' or 'inventory', not {self.endpoint!r}")
        if self.kind == "http_status" and not self.status:
            raise ValueError("fault kind 'http_status' needs a status")

    def matches(self, page: int | None, attempt: int, customer: str | None, endpoint: str) -> bool:
        """Whether this fault applies to this attempt."""
        return ((self.page is None or self.page == page)
                and (self.customer is None or self.customer == customer)
                and self.endpoint == endpoint
                and (self.attempts == "all" or attempt in self.attempts))

    def reply(self, real: Callable[[str], Reply], attempt: int) -> Reply:
        """The reply this fault produces. ``real(variant)`` builds the genuine reply, variant
        being "normal", "missing_fields" or "zero_systems" (endpoint-specific)."""
        r = self._reply(real, attempt)
        if self.body is not None and not r.drop:
            r.body = self.body.encode("utf-8")
        r.fault = self.kind
        return r

    def _reply(self, real: Callable[[str], Reply], attempt: int) -> Reply:
        kind = self.kind
        if kind in HTTP_ERROR_KINDS or kind == "http_status":
            status = self.status or HTTP_ERROR_KINDS[kind]
            if status >= 500 or status in (403, 404):
                return Reply(status, error_html(status), "text/html;charset=UTF-8")
            return json_reply(status, {"response_code": status, "error_code": "10001",
                                       "error_description": _REASONS.get(status, "Error")})
        if kind == "http_401":
            return json_reply(401, UNAUTHORIZED)
        if kind == "http_429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return json_reply(429, {"response_code": 429, "error_code": "10429",
                                    "error_description": "Too many requests"}, headers=headers)
        if kind == "access_denied":
            return json_reply(200, ACCESS_DENIED)
        if kind == "invalid_code":
            return json_reply(200, {"error": "invalid_code"})
        if kind == "html_200":
            return Reply(200, error_html(500), "text/html;charset=UTF-8")
        if kind == "empty_200":
            return Reply(200, b"", "text/plain;charset=UTF-8")
        if kind == "drop":
            return Reply(0, drop=True, delay=self.delay)
        if kind == "wrong_shape":
            # odd attempts: no message_response at all; even attempts: systemreport is a dict
            if attempt % 2:
                return json_reply(200, {"response_code": 200, "message_type": "systemreport"})
            return json_reply(200, {"response_code": 200, "message_type": "systemreport",
                                    "message_response": {"systemreport": {"resource_id": 1}}})
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


def _spec(d: Any) -> DatasetSpec:
    if isinstance(d, DatasetSpec):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"a dataset must be an object, not {type(d).__name__}")
    unknown = set(d) - {f.name for f in fields(DatasetSpec)}
    if unknown:
        raise ValueError(f"unknown dataset field(s): {', '.join(sorted(unknown))}")
    return DatasetSpec(**d)


def _fault(d: Any) -> Fault:
    if isinstance(d, Fault):
        return d
    if not isinstance(d, dict):
        raise ValueError("a fault must be an object")
    unknown = set(d) - {f.name for f in fields(Fault)}
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    return Fault(**d)


def _mutation(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d.get("after_page_requests"), int):
        raise ValueError("a mutation needs an integer 'after_page_requests'")
    unknown = set(d) - {"after_page_requests", "add_systems", "remove_systems", "customer"}
    if unknown or ("add_systems" in d) == ("remove_systems" in d):
        raise ValueError("a mutation has 'after_page_requests', one of 'add_systems' or "
                         "'remove_systems', and optionally 'customer'")
    return dict(d)


@dataclass
class Scenario:
    """Everything configurable about one simulated server. JSON form: ``to_dict()``."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    customers: dict[str, DatasetSpec] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    token_faults: list[Fault] = field(default_factory=list)
    mutations: list[dict[str, Any]] = field(default_factory=list)
    revoke_after_page_requests: int | None = None
    token_ttl: float = 3600
    omit_expires_in: bool = False
    hidden_token_ttl: float = 60
    token_limit_per_10min: int = 10
    max_live_tokens: int = 15
    latency: float = 0.0
    client_id: str = DEMO_CREDENTIALS["client_id"]
    client_secret: str = DEMO_CREDENTIALS["client_secret"]
    refresh_token: str = DEMO_CREDENTIALS["refresh_token"]
    api_key: str = DEMO_CREDENTIALS["api_key"]

    def __post_init__(self) -> None:
        self.dataset = _spec(self.dataset)
        self.customers = {str(k): _spec(v) for k, v in self.customers.items()}
        self.faults = [_fault(f) for f in self.faults]
        self.token_faults = [_fault(f) for f in self.token_faults]
        self.mutations = [_mutation(m) for m in self.mutations]
        for f in self.faults:
            if f.kind not in PAGE_FAULT_KINDS:
                raise ValueError(f"fault kind {f.kind!r} is for the token endpoint only")
        for m in self.mutations:
            if m.get("customer") is not None and m["customer"] not in self.customers:
                raise ValueError(f"mutation for unknown customer {m['customer']!r}")
        for f in self.token_faults:
            if f.kind not in TOKEN_FAULT_KINDS:
                raise ValueError(f"token fault kind {f.kind!r} is for API pages only")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        """Build from the JSON form; raises ValueError on unknown keys or bad values."""
        if not isinstance(d, dict):
            raise ValueError("a scenario must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """Load a JSON scenario file; raises ValueError (or OSError) on a bad file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, accepted back by ``from_dict``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["dataset"] = asdict(self.dataset)
        d["customers"] = {k: asdict(v) for k, v in self.customers.items()}
        d["faults"] = [f.to_dict() for f in self.faults]
        d["token_faults"] = [f.to_dict() for f in self.token_faults]
        d["mutations"] = [dict(m) for m in self.mutations]
        return d

    @staticmethod
    def random_transient_faults(count: int, pages: int, seed: int) -> list[Fault]:
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
