"""The simulator's HTTP side: one ThreadingHTTPServer serving PMP, Zoho accounts and /_sim."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

from .data import Dataset, catalogue
from .scenario import ACCESS_DENIED, UNAUTHORIZED, Reply, Scenario, json_reply

SECRET_FIELDS = ("client_id", "client_secret", "refresh_token")
ROUTES = {
    ("POST", "/oauth/v2/token"): "token",
    ("GET", "/dcapi/threats/systemreport/patches"): "page",
    ("GET", "/api/1.4/som/computers"): "inventory",
    ("GET", "/api/1.4/desktop/customers"): "customers",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it. Never holds a secret or a token value."""

    t: float
    wall: float
    method: str
    path: str
    query: dict[str, str]
    kind: str
    page: int | None
    customer: str | None
    auth: str
    status: int
    fault: str | None
    form_fields: tuple[str, ...]
    query_has_secret: bool


@dataclass
class Incoming:
    """A parsed request handed from the HTTP handler to the Simulator."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]
    kind: str


@dataclass
class Meta:
    """What the Simulator learnt about a request, for its record."""

    auth: str = "none"
    page: int | None = None
    customer: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Any) -> None:
        self.sim = sim
        self.open_connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_all_connections(self) -> None:
        """Shut down every keep-alive connection so handler threads end promptly."""
        with self.conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PMP-Simulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.open_connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Refuse a PUT (405)."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Refuse a DELETE (405)."""
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        t, wall = time.monotonic(), time.time()
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        sim = self.server.sim
        if split.path.startswith("/_sim/"):
            self._write(sim.control(method, split.path, body))
            return
        kind = ROUTES.get((method, split.path), "other")
        form: dict[str, str] = {}
        ctype = self.headers.get("Content-Type", "")
        if body and "application/x-www-form-urlencoded" in ctype:
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
        incoming = Incoming(method, split.path, query, {k.lower(): v for k, v in self.headers.items()},
                            form, kind)
        reply, meta = sim.handle(incoming)
        # Recorded before the client can see the answer, so the record keeps arrival order even
        # when the client's next request comes in on another connection at once.
        sim.record(RecordedRequest(
            t=t, wall=wall, method=method, path=split.path, kind=kind,
            query={k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in query.items()},
            page=meta.page, customer=meta.customer, auth=meta.auth, status=0 if reply.drop else reply.status,
            fault=reply.fault, form_fields=tuple(form),
            query_has_secret=any(k in query for k in SECRET_FIELDS)))
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        """Send ``reply``, or drop the connection if the reply says so."""
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client went away; nothing to answer
            self.close_connection = True


def serve(sim: Any, host: str, port: int) -> tuple[_Server, threading.Thread]:
    """Bind and serve ``sim`` in a daemon thread."""
    server = _Server((host, port), sim)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"pmp-simulator-{server.server_address[1]}", daemon=True)
    thread.start()
    return server, thread


def records_json(records: list[RecordedRequest]) -> bytes:
    """The /_sim/requests body."""
    return json.dumps([asdict(r) for r in records], ensure_ascii=False).encode("utf-8")


def scenario_from_body(body: bytes) -> Scenario:
    """Parse a POST /_sim/scenario body; raises ValueError."""
    try:
        data = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"scenario body is not JSON: {exc}") from None
    return Scenario.from_dict(data)


class TokenStore:
    """Zoho's bookkeeping of access tokens: expiry, the live-token cap and the 10-minute limit.

    Not thread-safe; the Simulator holds its lock around every call.
    """

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}
        self.issued: list[str] = []
        self._live: dict[str, deque[str]] = {}
        self._issued_at: dict[str, deque[float]] = {}

    def throttled(self, refresh: str, limit: int, now: float) -> bool:
        """Whether ``refresh`` has used up its tokens for the rolling 10 minutes."""
        times = self._issued_at.setdefault(refresh, deque())
        while times and now - times[0] >= 600:
            times.popleft()
        return len(times) >= limit

    def issue(self, refresh: str, ttl: float, max_live: int, now: float) -> str:
        """A new access token living ``ttl`` s; beyond ``max_live`` the oldest one dies."""
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.expiry[token] = now + ttl
        live = self._live.setdefault(refresh, deque())
        live.append(token)
        while len(live) > max_live:
            self.expiry.pop(live.popleft(), None)
        self._issued_at.setdefault(refresh, deque()).append(now)
        self.issued.append(token)
        return token

    def valid(self, token: str, now: float) -> bool:
        """Whether ``token`` is live and unexpired."""
        expiry = self.expiry.get(token)
        return expiry is not None and now < expiry

    def revoke(self) -> None:
        """Invalidate every access token."""
        self.expiry.clear()
        for live in self._live.values():
            live.clear()

    def reset_throttle(self) -> None:
        """Forget the issue times (a new scenario starts with a fresh 10-minute window)."""
        self._issued_at.clear()


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)  # ValueError -> 400
    if value < 1:
        raise ValueError(name)
    return value


class Simulator:
    """A fake PMP cloud + Zoho accounts server on a real socket. See the package docstring."""

    def __init__(self, scenario: Scenario | None = None, seed: int = 42,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.seed, self.host, self.port = seed, host, port
        self._lock = threading.RLock()
        self._records: list[RecordedRequest] = []
        self._tokens = TokenStore()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._generation = 0
        self.set_scenario(scenario or Scenario())

    # ----- lifecycle -----
    def start(self) -> Simulator:
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

    def __enter__(self) -> Simulator:
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
        """Replace the scenario: fresh datasets, fault attempt counters, request counters and
        token rate-limit window. Issued tokens stay valid; the request record is kept."""
        default = Dataset(scenario.dataset, self._seed_of(scenario.dataset.seed))
        datasets: dict[str | None, Dataset] = {None: default}
        for k, (name, spec) in enumerate(scenario.customers.items()):
            datasets[name] = Dataset(spec, self._seed_of(spec.seed), name, (k + 1) * 1_000_000)
        with self._lock:
            self.scenario = scenario
            self._datasets = datasets
            self._attempts: Counter[tuple[str, str | None, int]] = Counter()
            self._page_requests = 0
            self._token_requests = 0
            self._applied: set[int] = set()
            self._generation += 1
            self._cache.clear()
            self._tokens.reset_throttle()

    def _seed_of(self, seed: int | None) -> int:
        return self.seed if seed is None else seed

    def _dataset(self, customer: str | None) -> Dataset:
        try:
            return self._datasets[customer or None]
        except KeyError:
            raise ValueError(f"unknown customer {customer!r}") from None

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
    def tokens_issued(self) -> int:
        """How many access tokens were ever issued."""
        with self._lock:
            return len(self._tokens.issued)

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token ever issued (for secret-leak assertions)."""
        with self._lock:
            return list(self._tokens.issued)

    def valid_tokens(self) -> set[str]:
        """Tokens that would be accepted now."""
        now = time.monotonic()
        with self._lock:
            return {t for t, exp in self._tokens.expiry.items() if now < exp}

    def revoke_tokens(self) -> None:
        """Invalidate all access tokens now."""
        with self._lock:
            self._tokens.revoke()

    # ----- expectations -----
    def expected_mappings(self, customer: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(resource_id, patch_id, fields)`` of every distinct mapping DCAPI serves now."""
        with self._lock:
            ds = self._dataset(customer)
            indices = list(ds.dcapi_indices())
        return ds.mappings(indices)

    def dcapi_system_ids(self, customer: str | None = None) -> list[str]:
        """Resource ids (text) of the systems DCAPI reports now."""
        with self._lock:
            ds = self._dataset(customer)
            return [str(ds.resource_id(i)) for i in ds.dcapi_indices()]

    def managed_total(self, customer: str | None = None) -> int:
        """The managed-system count /api/1.4/som/computers reports."""
        with self._lock:
            return self._dataset(customer).managed_total()

    def total_pages(self, page_limit: int, customer: str | None = None) -> int:
        """DCAPI totalPages for this page size."""
        with self._lock:
            return math.ceil(len(self._dataset(customer).dcapi_indices()) / page_limit)

    # ----- request handling (called from handler threads) -----
    def handle(self, inc: Incoming) -> tuple[Reply, Meta]:
        """Answer one non-control request."""
        if inc.kind == "token":
            return self._token(inc), Meta()
        if inc.kind == "other":
            known = any(path == inc.path for _, path in ROUTES)
            status = 405 if known else 404
            return json_reply(status, {"response_code": status, "error_description":
                                       "Method Not Allowed" if known else "Not Found"}), Meta()
        meta = Meta(customer=inc.query.get("customername") or None)
        n = 0
        with self._lock:
            if inc.kind == "page":
                self._page_requests += 1
                n = self._page_requests
                if self.scenario.revoke_after_page_requests == n:
                    self._tokens.revoke()
            meta.auth = self._auth(inc.headers.get("authorization"))
        unauthorised = meta.auth in ("none", "invalid")
        reply = json_reply(401, UNAUTHORIZED) if unauthorised else self._api(inc, meta)
        if inc.kind == "page":
            reply.delay += self.scenario.latency
            self._apply_mutations(n)
        return reply, meta

    def _auth(self, header: str | None) -> str:
        if header is None or not header.strip():
            return "none"
        value = header.strip()
        if value[:16].lower() == "zoho-oauthtoken ":
            return "oauth" if self._tokens.valid(value[16:].strip(), time.monotonic()) else "invalid"
        return "apikey" if self.scenario.api_key and value == self.scenario.api_key else "invalid"

    def _apply_mutations(self, n: int) -> None:
        with self._lock:
            for k, m in enumerate(self.scenario.mutations):
                if k in self._applied or n < m["after_page_requests"]:
                    continue
                self._applied.add(k)
                ds = self._datasets.get(m.get("customer"))
                if ds is not None:
                    ds.add_systems(m.get("add_systems", 0))
                    ds.remove_systems(m.get("remove_systems", 0))

    def _api(self, inc: Incoming, meta: Meta) -> Reply:
        if inc.kind == "customers":
            customers = [{"customer_id": k + 1, "customer_name": name}
                         for k, name in enumerate(self.scenario.customers)]
            return json_reply(200, {"message_type": "customers", "message_response":
                                    {"customers": customers}, "message_version": "1.0",
                                    "status": "success"})
        try:
            ds = self._dataset(meta.customer)
        except ValueError:
            return json_reply(400, {"response_code": 400, "error_code": "10003",
                                    "error_description": "Invalid customer name"})
        limit_name, default = ("pageLimit", 30) if inc.kind == "page" else ("pagelimit", 25)
        try:
            page = _int_param(inc.query, "page", 1)
            limit = min(_int_param(inc.query, limit_name, default), 1000)
        except ValueError:
            return json_reply(400, {"response_code": 400, "error_code": "10001",
                                    "error_description": "Invalid page or page limit"})
        meta.page = page
        with self._lock:
            self._attempts[(inc.kind, meta.customer, page)] += 1
            attempt = self._attempts[(inc.kind, meta.customer, page)]
        fault = next((f for f in self.scenario.faults
                      if f.matches(page, attempt, meta.customer, inc.kind)), None)
        build = self._page_reply if inc.kind == "page" else self._inventory_reply

        def real(variant: str) -> Reply:
            return build(ds, meta.customer, page, limit, variant)

        return fault.reply(real, attempt) if fault else real("normal")

    def _page_reply(self, ds: Dataset, customer: str | None, page: int, limit: int,
                    variant: str) -> Reply:
        with self._lock:
            indices = ds.page_indices(page, limit)
            total = len(ds.dcapi_indices())
            key = (self._generation, customer, ds.version, page, limit)
        pages = math.ceil(total / limit)
        if variant == "zero_systems":
            systems = b"[]"
        elif variant == "missing_fields":
            systems = json.dumps(_break(ds, indices), ensure_ascii=False).encode("utf-8")
        else:
            systems = self._cached_systems(key, ds, indices)
        link = f"{self.url}/dcapi/threats/systemreport/patches?page={{}}&pageLimit={limit}"
        if customer:
            link += f"&customername={quote(customer)}"
        metadata = {"page": page, "pageLimit": limit, "totalPages": pages, "totalRecords": total,
                    "links": {"next": link.format(page + 1) if page < pages else None,
                              "prev": link.format(page - 1) if page > 1 else None}}
        body = b"".join((b'{"metadata": ', json.dumps(metadata).encode("utf-8"),
                         b', "response_code": 200, "message_type": "systemreport", '
                         b'"message_response": {"systemreport": ', systems, b"}}"))
        return Reply(200, body, "text/plain;charset=UTF-8")

    def _cached_systems(self, key: tuple[Any, ...], ds: Dataset, indices: list[int]) -> bytes:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        systems = ds.systems_json(indices)
        if len(systems) < 4_000_000:
            with self._lock:
                self._cache[key] = systems
                while len(self._cache) > 6:
                    self._cache.popitem(last=False)
        return systems

    def _inventory_reply(self, ds: Dataset, customer: str | None, page: int, limit: int,
                         variant: str) -> Reply:
        with self._lock:
            start = ds.lo + (page - 1) * limit
            indices = list(range(start, min(ds.hi, start + limit)))
            total = ds.managed_total()
        computers = [] if variant == "zero_systems" else [ds.inventory_entry(i) for i in indices]
        response: dict[str, Any] = {"computers": computers, "total": total, "limit": limit,
                                    "page": page}
        if variant == "zero_systems":
            response["total"] = 0
        elif variant == "missing_fields":
            del response["total"]
        return json_reply(200, {"message_type": "computers", "message_response": response,
                                "message_version": "1.0", "status": "success"})

    def _token(self, inc: Incoming) -> Reply:
        with self._lock:
            self._token_requests += 1
            n = self._token_requests
        fault = next((f for f in self.scenario.token_faults
                      if f.attempts == "all" or n in f.attempts), None)
        if fault is not None:
            return fault.reply(lambda _variant: self._issue(inc), n)
        return self._issue(inc)

    def _issue(self, inc: Incoming) -> Reply:
        fields = {**inc.query, **inc.form}  # Zoho also reads the query string
        sc = self.scenario
        if fields.get("grant_type") != "refresh_token":
            return json_reply(200, {"error": "unsupported_grant_type"})
        if (fields.get("client_id"), fields.get("client_secret"), fields.get("refresh_token")) != (
                sc.client_id, sc.client_secret, sc.refresh_token):
            return json_reply(200, {"error": "invalid_code"})
        now = time.monotonic()
        with self._lock:
            if self._tokens.throttled(sc.refresh_token, sc.token_limit_per_10min, now):
                return json_reply(200, ACCESS_DENIED)
            ttl = sc.hidden_token_ttl if sc.omit_expires_in else sc.token_ttl
            token = self._tokens.issue(sc.refresh_token, ttl, sc.max_live_tokens, now)
        body: dict[str, Any] = {"access_token": token, "api_domain": self.url, "token_type": "Bearer"}
        if not sc.omit_expires_in:
            body["expires_in"] = int(ttl) if float(ttl).is_integer() else ttl
        return json_reply(200, body)

    def control(self, method: str, path: str, body: bytes) -> Reply:
        """The unrecorded /_sim/* endpoints used by out-of-process tests."""
        route = (method, path)
        if route == ("GET", "/_sim/requests"):
            return Reply(200, records_json(self.requests))
        if route == ("GET", "/_sim/info"):
            return json_reply(200, {"url": self.url, "managed_total": self.managed_total(),
                                    "dcapi_systems": len(self.dcapi_system_ids()),
                                    "tokens_issued": self.tokens_issued})
        if route == ("POST", "/_sim/reset"):
            self.reset_requests()
        elif route == ("POST", "/_sim/revoke"):
            self.revoke_tokens()
        elif route == ("POST", "/_sim/scenario"):
            try:
                self.set_scenario(scenario_from_body(body))
            except ValueError as exc:
                return json_reply(400, {"error": str(exc)})
        else:
            return json_reply(404, {"error": "unknown control endpoint"})
        return json_reply(200, {"ok": True})


def _break(ds: Dataset, indices: list[int]) -> list[dict[str, Any]]:
    """The page with patch_id missing on some entries of its first system and an empty patch
    list on its last (the ``missing_fields`` fault)."""
    systems = [ds.system(i) for i in indices]
    if systems:
        for patch in systems[0]["patches"][::3]:
            del patch["patch_id"]
        systems[-1]["patches"] = [] if len(systems) > 1 else systems[-1]["patches"]
    return systems
