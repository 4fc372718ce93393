"""The PMP API's routes and the genuine answers of its endpoints.

Cross-cutting handling (authentication, faults, latency, the rate limiter) is the
Simulator's; this module only turns an estate version into wire bodies.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from .applicable import ApplicableCache, ApplicablePatches
from .data import Dataset
from .estate import Estate
from .replies import REASONS, TEXT_TYPE, Reply, json_reply
from .traffic import CATALOG_ENTRIES_PER_SYSTEM

PAGES_PATH = "/dcapi/threats/systemreport/patches"
CATALOG_PATH = "/dcapi/threats/patches"
INVENTORY_PATH = "/api/1.4/som/computers"
CUSTOMERS_PATH = "/api/1.4/desktop/customers"
TOKEN_PATH = "/oauth/v2/token"
ROUTES = {
    ("POST", TOKEN_PATH): "token",
    ("GET", PAGES_PATH): "page",
    ("GET", CATALOG_PATH): "catalog",
    ("GET", INVENTORY_PATH): "inventory",
    ("GET", CUSTOMERS_PATH): "customers",
}
PMP_KINDS = frozenset({"page", "catalog", "inventory", "customers"})
PAGED_KINDS = {"page": ("pageLimit", 30), "catalog": ("pageLimit", 30), "inventory": ("pagelimit", 25)}
MAX_PAGE_LIMIT = 1000
CATALOG_MODES = ("available", "404", "unsupported")


def route_kind(method: str, path: str) -> str:
    """The route of a request: a value of ``ROUTES``, or "other"."""
    return ROUTES.get((method, path), "other")


def unrouted_reply(path: str) -> Reply:
    """404 for an unknown path, 405 for a known path with the wrong method."""
    status = 405 if any(p == path for _, p in ROUTES) else 404
    return json_reply(status, {"response_code": status, "error_description": REASONS[status]})


def paging(kind: str, query: dict[str, str]) -> tuple[int, int]:
    """``(page, limit)`` of a paged request (limit capped at 1000); ValueError if not positive
    integers."""
    limit_name, default_limit = PAGED_KINDS[kind]

    def positive(name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        value = int(raw)
        if value < 1:
            raise ValueError(name)
        return value

    return positive("page", 1), min(positive(limit_name, default_limit), MAX_PAGE_LIMIT)


def customers_reply(names: list[str]) -> Reply:
    """``/api/1.4/desktop/customers``: the named customers, ids from 1."""
    customers = [{"customer_id": k + 1, "customer_name": name} for k, name in enumerate(names)]
    return json_reply(200, {"message_type": "customers", "message_response": {"customers": customers},
                            "message_version": "1.0", "status": "success"})


def dcapi_body(url: str, path: str, entity: str, page: int, limit: int, total: int,
               items: bytes, customer: str | None) -> bytes:
    """A /dcapi envelope around ``items`` (the JSON list ``message_response.<entity>``)."""
    pages = math.ceil(total / limit)
    link = f"{url}{path}?page={{}}&pageLimit={limit}"
    if customer:
        link += f"&customername={quote(customer)}"
    metadata = {"page": page, "pageLimit": limit, "totalPages": pages, "totalRecords": total,
                "links": {"next": link.format(page + 1) if page < pages else None,
                          "prev": link.format(page - 1) if page > 1 else None}}
    return b"".join((b'{"metadata": ', json.dumps(metadata).encode("utf-8"),
                     b', "response_code": 200, "message_type": "', entity.encode(),
                     b'", "message_response": {"', entity.encode(), b'": ', items, b"}}"))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class Endpoints:
    """The genuine answers of the paged endpoints for one scenario: system-report pages
    (the last few cached per estate version) and the applicable-patches catalog."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._applicable = ApplicableCache()

    def applicable(self, ds: Dataset, estate: Estate | None = None) -> ApplicablePatches:
        """The catalog of ``ds`` (at ``estate``, default the current version)."""
        return self._applicable.get(ds, estate or ds.estate)

    def build(self, kind: str, url: str, ds: Dataset, customer: str | None, page: int, limit: int,
              variant: str = "normal") -> Reply:
        """The answer of paged endpoint ``kind`` from the current estate version of ``ds``;
        ``variant`` "missing_fields" or "zero_systems" breaks it the way those faults do."""
        estate = ds.estate
        if kind == "page":
            return self._systemreport(url, ds, estate, customer, page, limit, variant)
        if kind == "catalog":
            return self._catalog(url, ds, estate, customer, page, limit, variant)
        return self._inventory(ds, estate, page, limit, variant)

    def _systemreport(self, url: str, ds: Dataset, est: Estate, customer: str | None, page: int,
                      limit: int, variant: str) -> Reply:
        keys = ds.page_indices(page, limit, est)
        if variant == "zero_systems":
            keys, items = [], b"[]"
        elif variant == "missing_fields":
            items = _dumps(_break([ds.system(k, est) for k in keys]))
        else:
            items = self._cached_page((customer, est.version, page, limit), ds, keys, est)
        body = dcapi_body(url, PAGES_PATH, "systemreport", page, limit, len(ds.dcapi_indices(est)),
                          items, customer)
        return Reply(200, body, TEXT_TYPE, systems=len(keys))

    def _cached_page(self, key: tuple[Any, ...], ds: Dataset, keys: list[int], est: Estate) -> bytes:
        with self._lock:
            cached = self._pages.get(key)
            if cached is not None:
                self._pages.move_to_end(key)
                return cached
        items = ds.systems_json(keys, est)
        if len(items) < 4_000_000:
            with self._lock:
                self._pages[key] = items
                while len(self._pages) > 6:
                    self._pages.popitem(last=False)
        return items

    def _catalog(self, url: str, ds: Dataset, est: Estate, customer: str | None, page: int,
                 limit: int, variant: str) -> Reply:
        entries = self.applicable(ds, est).entries
        served = [] if variant == "zero_systems" else list(entries[(page - 1) * limit: page * limit])
        if variant == "missing_fields":  # patch_id missing on every third entry
            served = [{k: v for k, v in e.items() if k != "patch_id" or j % 3} for j, e in enumerate(served)]
        body = dcapi_body(url, CATALOG_PATH, "patches", page, limit, len(entries), _dumps(served), customer)
        return Reply(200, body, TEXT_TYPE, systems=len(served) / CATALOG_ENTRIES_PER_SYSTEM)

    @staticmethod
    def _inventory(ds: Dataset, est: Estate, page: int, limit: int, variant: str) -> Reply:
        keys = ds.managed_keys(est)[(page - 1) * limit: page * limit]
        computers = [] if variant == "zero_systems" else [ds.inventory_entry(k, est) for k in keys]
        response: dict[str, Any] = {"computers": computers, "total": len(ds.managed_keys(est)),
                                    "limit": limit, "page": page}
        if variant == "zero_systems":
            response["total"] = 0
        elif variant == "missing_fields":
            del response["total"]
        return json_reply(200, {"message_type": "computers", "message_response": response,
                                "message_version": "1.0", "status": "success"})


def _break(systems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page with patch_id missing on every third entry of its first system and an empty
    patch list on its last (the ``missing_fields`` fault)."""
    if systems:
        for patch in systems[0]["patches"][::3]:
            del patch["patch_id"]
        systems[-1]["patches"] = [] if len(systems) > 1 else systems[-1]["patches"]
    return systems
