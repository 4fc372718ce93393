"""The Simulator: one fake PMP cloud + Zoho accounts server on a real socket, and its Python API.

It owns the scenario and the state derived from it (datasets, attempt counters, traffic
counters) and decides, per request, in this order: the traffic rules (dropped reused
connection, rate limiter), the page counter, authentication, the endpoint's own errors,
faults, the genuine answer, latency, then due tenant changes. ``handler.py`` does the HTTP,
``api.py`` the bodies, ``tokens.py`` Zoho, ``control.py`` the /_sim endpoints.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Self

from .api import PMP_KINDS, Endpoints, customers_reply, paging, unrouted_reply
from .control import control_reply
from .data import Dataset, catalogue, tenant_datasets
from .faults import ENTITIES
from .handler import SimulatorHTTPServer, serve
from .mutate import apply_mutation
from .mutations import Mutation
from .records import Incoming, Meta, RecordedRequest
from .replies import INVALID_CUSTOMER, INVALID_PAGING, UNAUTHORIZED, UNSUPPORTED_ENDPOINT, Reply, html_reply, json_reply
from .scenario import Scenario
from .tokens import ZohoAccounts
from .traffic import LatencyModel, ReusedConnectionDropper, SlidingWindowLimiter

__all__ = ["RecordedRequest", "Simulator"]


class Simulator:
    """A fake PMP cloud + Zoho accounts server on a real socket. See the package docstring."""

    def __init__(self, scenario: Scenario | None = None, seed: int = 42,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.seed, self.host, self.port = seed, host, port
        self._lock = threading.RLock()
        self._records: list[RecordedRequest] = []
        self._accounts = ZohoAccounts()
        self._server: SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.set_scenario(scenario or Scenario())

    # ----- lifecycle -----
    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        with self._lock:  # build the catalogue and page index now, not on the first request
            for ds in self._datasets.values():
                ds.dcapi_indices()
                catalogue(ds.seed)
        self._server, self._thread = serve(self, self.host, self.port)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL of both the PMP API and the accounts server."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return f"http://{self.host}:{self.port}"

    # ----- state -----
    def set_scenario(self, scenario: Scenario) -> None:
        """Replace the scenario: fresh datasets, fault attempt counters, request counters,
        traffic counters (rate limiter, reused connections, latency sequence) and token
        rate-limit window. Issued tokens stay valid; the request record is kept."""
        datasets = tenant_datasets(scenario.dataset, scenario.customers, self.seed)
        with self._lock:
            self.scenario = scenario
            self._datasets = datasets
            self._endpoints = Endpoints()
            self._attempts: Counter[tuple[str, str | None, int]] = Counter()
            self._page_requests = 0
            self._pending: list[Mutation] = scenario.parsed_mutations()
            self._limiter = SlidingWindowLimiter(scenario.parsed_rate_limit())
            self._dropper = ReusedConnectionDropper(scenario.parsed_drop_reused())
            self._latency = LatencyModel(scenario.latency, scenario.latency_jitter,
                                         scenario.latency_per_system, self.seed)
        self._accounts.new_scenario()

    def _dataset(self, customer: str | None) -> Dataset:
        try:
            return self._datasets[customer or None]
        except KeyError:
            raise ValueError(f"unknown customer {customer!r}") from None

    def mutate(self, **fields: Any) -> None:
        """Apply a tenant change now (between runs): the fields of a scenario mutation without
        ``after_page_requests`` (see ``mutations.py``), e.g. ``mutate(add_systems={"count": 3,
        "where": "middle"}, customer="Acme")``. All or nothing; raises ValueError."""
        mutation = Mutation.parse(fields, triggered=False)
        with self._lock:
            ds = self._dataset(mutation.customer)
            before = ds.estate
            try:
                apply_mutation(ds, mutation)
            except ValueError:
                ds.replace(before)
                raise

    def _apply_due_mutations(self, page_requests: int) -> None:
        with self._lock:
            due = [m for m in self._pending if page_requests >= (m.after_page_requests or 0)]
            self._pending = [m for m in self._pending if page_requests < (m.after_page_requests or 0)]
            for m in due:
                ds = self._datasets.get(m.customer)
                if ds is not None:
                    before = ds.estate
                    try:
                        apply_mutation(ds, m)
                    except ValueError:  # e.g. an id already removed: the change does not happen
                        ds.replace(before)

    # ----- records and tokens -----
    def record(self, rec: RecordedRequest) -> None:
        """Append to the request record (called by the HTTP handler)."""
        with self._lock:
            self._records.append(rec)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the recorded requests, in arrival order."""
        with self._lock:
            return sorted(self._records, key=lambda r: r.t)

    def reset_requests(self) -> None:
        """Clear the request record."""
        with self._lock:
            self._records.clear()

    @property
    def rate_limited_count(self) -> int:
        """Requests the rate limiter refused since the scenario was set."""
        with self._lock:
            return self._limiter.refused

    @property
    def tokens_issued(self) -> int:
        """How many access tokens were ever issued."""
        return len(self._accounts.issued())

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token ever issued (for secret-leak assertions)."""
        return self._accounts.issued()

    def valid_tokens(self) -> set[str]:
        """Tokens that would be accepted now."""
        return self._accounts.live()

    def revoke_tokens(self) -> None:
        """Invalidate all access tokens now."""
        self._accounts.revoke()

    # ----- expectations: what the server serves now -----
    def expected_mappings(self, customer: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(resource_id, patch_id, fields)`` of every distinct mapping DCAPI serves now."""
        with self._lock:
            ds = self._dataset(customer)
            estate = ds.estate
        return ds.mappings(list(ds.dcapi_indices(estate)), estate)

    def dcapi_system_ids(self, customer: str | None = None) -> list[str]:
        """Resource ids (text) of the systems DCAPI reports now, in page order."""
        with self._lock:
            ds = self._dataset(customer)
            return [str(ds.resource_id(k)) for k in ds.dcapi_indices()]

    def managed_total(self, customer: str | None = None) -> int:
        """The managed-system count /api/1.4/som/computers reports."""
        with self._lock:
            return self._dataset(customer).managed_total()

    def total_pages(self, page_limit: int, customer: str | None = None) -> int:
        """DCAPI totalPages for this page size."""
        with self._lock:
            return math.ceil(len(self._dataset(customer).dcapi_indices()) / page_limit)

    def catalog(self, customer: str | None = None) -> list[dict[str, Any]]:
        """Every entry /dcapi/threats/patches serves now, wire-shaped, sorted by patch id."""
        with self._lock:
            ds, endpoints = self._dataset(customer), self._endpoints
        return copy.deepcopy(list(endpoints.applicable(ds).entries))

    def patch_cves(self, customer: str | None = None) -> dict[str, list[str]]:
        """Patch id (text) -> the CVE ids the catalog gives it now, for every applicable patch."""
        with self._lock:
            ds, endpoints = self._dataset(customer), self._endpoints
        return {pid: list(cves) for pid, cves in endpoints.applicable(ds).cves.items()}

    # ----- request handling (called from handler threads) -----
    def handle(self, inc: Incoming) -> tuple[Reply, Meta]:
        """Answer one recorded request; the reply's ``delay`` is slept by the caller."""
        meta = Meta(customer=inc.query.get("customername") or None)
        page_requests = 0
        with self._lock:  # the traffic rules see arrivals in the order they are handled
            meta.seen = time.monotonic()
            meta.t = inc.arrived if inc.arrived is not None and inc.arrived <= meta.seen else meta.seen
            meta.wall = time.time() - (meta.seen - meta.t)
            if inc.kind in PMP_KINDS:  # both rules count every arrival, the refused ones too
                refusal = self._limiter.arrive(meta.t)
                refusal = self._dropper.arrive(inc.reused) or refusal
                if refusal is not None:
                    return refusal, meta
            if inc.kind == "page":
                self._page_requests += 1
                page_requests = self._page_requests
                if self.scenario.revoke_after_page_requests == page_requests:
                    self._accounts.revoke()
        if inc.kind == "token":
            return self._accounts.answer(inc, self.scenario, self.url), meta
        if inc.kind not in PMP_KINDS:
            return unrouted_reply(inc.path), meta
        reply = self._pmp_reply(inc, meta)
        with self._lock:
            reply.delay += self._latency.delay(reply.systems)
        if page_requests:
            self._apply_due_mutations(page_requests)
        return reply, meta

    def _auth(self, header: str | None) -> str:
        if header is None or not header.strip():
            return "none"
        value = header.strip()
        if value[:16].lower() == "zoho-oauthtoken ":
            return "oauth" if self._accounts.valid(value[16:].strip()) else "invalid"
        return "apikey" if self.scenario.api_key and value == self.scenario.api_key else "invalid"

    def _pmp_reply(self, inc: Incoming, meta: Meta) -> Reply:
        sc = self.scenario
        if inc.kind == "catalog" and sc.catalog == "404":  # a build without the route
            return html_reply(404)
        meta.auth = self._auth(inc.headers.get("authorization"))
        if meta.auth in ("none", "invalid"):
            return json_reply(401, UNAUTHORIZED)
        if inc.kind == "catalog" and sc.catalog == "unsupported":
            return json_reply(200, UNSUPPORTED_ENDPOINT)
        if inc.kind == "customers":
            return customers_reply(list(sc.customers))
        with self._lock:
            ds = self._datasets.get(meta.customer)
            endpoints = self._endpoints
        if ds is None:
            return json_reply(400, INVALID_CUSTOMER)
        try:
            page, limit = paging(inc.kind, inc.query)
        except ValueError:
            return json_reply(400, INVALID_PAGING)
        meta.page = page
        with self._lock:
            self._attempts[(inc.kind, meta.customer, page)] += 1
            attempt = self._attempts[(inc.kind, meta.customer, page)]
        fault = next((f for f in sc.faults if f.matches(page, attempt, meta.customer, inc.kind)), None)

        def real(variant: str) -> Reply:
            return endpoints.build(inc.kind, self.url, ds, meta.customer, page, limit, variant)

        return fault.reply(real, attempt, ENTITIES[inc.kind]) if fault else real("normal")

    def control(self, method: str, path: str, body: bytes) -> Reply:
        """The unrecorded /_sim/* endpoints used by out-of-process tests."""
        return control_reply(self, method, path, body)
