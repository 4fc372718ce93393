"""Scenarios: what the simulated PMP estate looks like, how the server behaves, which faults
it injects and which tenant changes it makes. ``python -m pmp_scrapy.simulator --help``
describes every field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .api import CATALOG_MODES
from .data import DatasetSpec
from .faults import PAGE_FAULT_KINDS, TOKEN_FAULT_KINDS, Fault, transient_faults
from .mutations import Mutation
from .traffic import DropReused, RateLimit, parse_drop_reused, parse_rate_limit

__all__ = ["DEMO_CREDENTIALS", "Fault", "Scenario"]

DEMO_CREDENTIALS: dict[str, str] = {
    "client_id": "1000.DEMOCLIENT",
    "client_secret": "demo-client-secret-0000",
    "refresh_token": "1000.demo-refresh-token.0000",
    "api_key": "DEMO-API-KEY-0000",
}


def _spec(d: Any) -> DatasetSpec:
    if isinstance(d, DatasetSpec):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"a dataset must be an object, not {type(d).__name__}")  # noqa: TRY004 - bad scenario JSON is a ValueError
    unknown = set(d) - {f.name for f in fields(DatasetSpec)}
    if unknown:
        raise ValueError(f"unknown dataset field(s): {', '.join(sorted(unknown))}")
    return DatasetSpec(**d)


def _fault(d: Any) -> Fault:
    if isinstance(d, Fault):
        return d
    if not isinstance(d, dict):
        raise ValueError("a fault must be an object")  # noqa: TRY004 - bad scenario JSON is a ValueError
    unknown = set(d) - {f.name for f in fields(Fault)}
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    return Fault(**d)


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")
    return value


@dataclass
class Scenario:
    """Everything configurable about one simulated server. JSON form: ``to_dict()``."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    customers: dict[str, DatasetSpec] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    token_faults: list[Fault] = field(default_factory=list)
    mutations: list[Mutation | dict[str, Any]] = field(default_factory=list)
    revoke_after_page_requests: int | None = None
    token_ttl: float = 3600
    omit_expires_in: bool = False
    hidden_token_ttl: float = 60
    token_limit_per_10min: int = 10
    max_live_tokens: int = 15
    latency: float = 0.0
    latency_jitter: float = 0.0
    latency_per_system: float = 0.0
    rate_limit: RateLimit | dict[str, Any] | None = None
    drop_reused: DropReused | dict[str, Any] | None = None
    catalog: str = "available"
    client_id: str = DEMO_CREDENTIALS["client_id"]
    client_secret: str = DEMO_CREDENTIALS["client_secret"]
    refresh_token: str = DEMO_CREDENTIALS["refresh_token"]
    api_key: str = DEMO_CREDENTIALS["api_key"]

    def __post_init__(self) -> None:
        self.dataset = _spec(self.dataset)
        self.customers = {str(k): _spec(v) for k, v in self.customers.items()}
        self.faults = [_fault(f) for f in self.faults]
        self.token_faults = [_fault(f) for f in self.token_faults]
        self.mutations = [Mutation.parse(m) for m in self.mutations]
        self.rate_limit = parse_rate_limit(self.rate_limit)
        self.drop_reused = parse_drop_reused(self.drop_reused)
        for name in ("latency", "latency_jitter", "latency_per_system"):
            _seconds(getattr(self, name), name)
        if self.catalog not in CATALOG_MODES:
            raise ValueError(f"catalog must be one of {', '.join(CATALOG_MODES)}, not {self.catalog!r}")
        for f in self.faults:
            if f.kind not in PAGE_FAULT_KINDS:
                raise ValueError(f"fault kind {f.kind!r} is for the token endpoint only")
        for m in self.parsed_mutations():
            if m.customer is not None and m.customer not in self.customers:
                raise ValueError(f"mutation for unknown customer {m.customer!r}")
        for f in self.token_faults:
            if f.kind not in TOKEN_FAULT_KINDS:
                raise ValueError(f"token fault kind {f.kind!r} is for API pages only")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        """Build from the JSON form; raises ValueError on unknown keys or bad values."""
        if not isinstance(d, dict):
            raise ValueError("a scenario must be a JSON object")  # noqa: TRY004 - bad scenario JSON is a ValueError
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
        d["mutations"] = [m.to_dict() for m in self.parsed_mutations()]
        rate_limit, drop_reused = self.parsed_rate_limit(), self.parsed_drop_reused()
        d["rate_limit"] = None if rate_limit is None else asdict(rate_limit)
        d["drop_reused"] = None if drop_reused is None else asdict(drop_reused)
        return d

    # The fields above accept the JSON forms; these read them typed (parsing is idempotent).
    def parsed_mutations(self) -> list[Mutation]:
        """``mutations`` as ``Mutation`` values."""
        return [Mutation.parse(m) for m in self.mutations]

    def parsed_rate_limit(self) -> RateLimit | None:
        """``rate_limit`` as a ``RateLimit`` (None: no limit)."""
        return parse_rate_limit(self.rate_limit)

    def parsed_drop_reused(self) -> DropReused | None:
        """``drop_reused`` as a ``DropReused`` (None: connections are never dropped)."""
        return parse_drop_reused(self.drop_reused)

    @staticmethod
    def random_transient_faults(count: int, pages: int, seed: int) -> list[Fault]:
        """``count`` transient page faults (503, 502, 429 with Retry-After 1, drop, 0.5 s slow)
        spread over pages 1..``pages``, at most two per page on attempts 1 and 2, so a third
        attempt always succeeds."""
        return transient_faults(count, pages, seed)
