"""The simulator's patch catalog (/dcapi/threats/patches), through real HTTP."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from test_simulator import PAGES, SMALL, get, get_json, sweep

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.simulator import applicable as applicable_module

CATALOG = "/dcapi/threats/patches"
FIELDS = {"patch_id", "bulletinid", "severity", "vendor_name", "cveids", "kb_number", "reboot_required",
          "patch_released_time", "installed_system_count", "missing_system_count"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(Scenario(dataset=SMALL)) as s:
        yield s


def cve_list(value: list[str] | str) -> list[str]:
    """``cveids`` as a list, whichever way it was sent."""
    if isinstance(value, list):
        return value
    return [c.strip() for c in value.split(",") if c.strip()]


def counts_from_mappings(sim: Simulator, customer: str | None = None) -> dict[str, tuple[int, int]]:
    """patch id -> (installed systems, missing systems), from what DCAPI serves."""
    installed: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    for _rid, pid, fields in sim.expected_mappings(customer):
        (installed if fields["patch_status"] == "Installed" else missing)[pid] += 1
    return {pid: (installed[pid], missing[pid]) for pid in {*installed, *missing}}


def test_catalog_envelope_paging_and_sort_order(sim: Simulator) -> None:
    status, headers, body = get(sim, f"{CATALOG}?page=2&pageLimit=50")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    doc = json.loads(body)
    meta = doc["metadata"]
    everything = sim.catalog()
    assert (meta["page"], meta["pageLimit"], meta["totalRecords"]) == (2, 50, len(everything))
    assert meta["totalPages"] == -(-len(everything) // 50)
    assert "page=3&pageLimit=50" in meta["links"]["next"] and "page=1&" in meta["links"]["prev"]
    assert doc["response_code"] == 200 and doc["message_type"] == "patches"
    assert doc["message_response"]["patches"] == everything[50:100]
    assert sweep(sim, CATALOG, "patches", limit=70) == everything
    ids = [int(e["patch_id"]) for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for entry in everything:
        assert FIELDS <= set(entry) and ({"patch_name", "patchname"} & set(entry))


def test_catalog_agrees_with_the_system_report(sim: Simulator) -> None:
    counts = counts_from_mappings(sim)
    mapping_fields = {pid: f for _rid, pid, f in sim.expected_mappings()}
    catalog = sim.catalog()
    assert {str(e["patch_id"]) for e in catalog} == set(counts)  # exactly the applicable patches
    for e in catalog:
        pid = str(e["patch_id"])
        assert (e["installed_system_count"], e["missing_system_count"]) == counts[pid]
        name = str(e.get("patch_name", e.get("patchname")))
        seen = mapping_fields[pid]
        assert (name, e["severity"], e["bulletinid"], e["vendor_name"]) == (
            seen["patchname"], seen["severity"], seen["bulletinid"], seen["vendor_name"])
        kb = re.search(r"kb(\d+)", name, re.IGNORECASE)
        expected_kb = f"KB{kb.group(1)}" if kb and e["vendor_name"] == "Microsoft" else None
        assert e["kb_number"] == expected_kb
        assert isinstance(e["patch_released_time"], int) and e["patch_released_time"] > 1_500_000_000_000


def test_catalog_spellings_vary_and_cves_are_shared(sim: Simulator) -> None:
    catalog = sim.catalog()
    kinds: Counter[str] = Counter()
    for e in catalog:
        kinds["patchname" if "patchname" in e else "patch_name"] += 1
        kinds[f"cves_{type(e['cveids']).__name__}"] += 1
        kinds[f"reboot_{type(e['reboot_required']).__name__}"] += 1
        kinds[f"id_{type(e['patch_id']).__name__}"] += 1
        if not cve_list(e["cveids"]):
            kinds["no_cve"] += 1
        assert e["reboot_required"] in (True, False, 0, 1)
        assert 0 <= len(cve_list(e["cveids"])) <= 3
    assert 0 < kinds["patchname"] < kinds["patch_name"] / 5  # a small share uses the other spelling
    assert kinds["cves_list"] and kinds["cves_str"] and kinds["no_cve"]
    assert kinds["reboot_bool"] and kinds["reboot_int"] and kinds["id_int"] and kinds["id_str"]
    cves = sim.patch_cves()
    assert cves == {str(e["patch_id"]): cve_list(e["cveids"]) for e in catalog}
    carriers = Counter(c for ids in cves.values() for c in ids)
    assert max(carriers.values()) >= 2
    assert all(re.fullmatch(r"CVE-\d{4}-\d{4,}", c) for c in carriers)


def test_a_tiny_tenant_still_has_a_shared_cve() -> None:
    with Simulator(Scenario(dataset=DatasetSpec(managed_systems=1, no_patch_share=0.0))) as sim:
        carriers = Counter(c for ids in sim.patch_cves().values() for c in ids)
        assert max(carriers.values()) >= 2
        assert sim.patch_cves() == {str(e["patch_id"]): cve_list(e["cveids"]) for e in sim.catalog()}


def test_catalog_is_deterministic_for_a_seed() -> None:
    a, b = (Simulator(Scenario(dataset=SMALL), seed=3) for _ in range(2))
    assert a.catalog() == b.catalog() and a.patch_cves() == b.patch_cves()
    assert Simulator(Scenario(dataset=SMALL), seed=4).catalog() != a.catalog()


@pytest.mark.parametrize(("mode", "status", "check"), [
    ("404", 404, lambda body, ctype: ctype.startswith("text/html") and b"Not Found" in body),
    ("unsupported", 200, lambda body, ctype: json.loads(body) == {
        "error_code": "10022", "error_description": "API Endpoint is not supported by current server"}),
])
def test_servers_without_the_catalog(mode: str, status: int, check: Any) -> None:
    with Simulator(Scenario(dataset=SMALL, catalog=mode)) as sim:
        got, headers, body = get(sim, f"{CATALOG}?page=1")
        assert got == status and check(body, headers["Content-Type"])
        assert get(sim, f"{PAGES}?page=1")[0] == 200  # the rest of the server is unaffected
        assert [r.kind for r in sim.requests] == ["catalog", "page"]


def test_catalog_needs_auth_and_takes_faults() -> None:
    faults = [Fault(endpoint="catalog", page=2, attempts=(1,), kind="http_503"),
              Fault(endpoint="catalog", page=3, kind="wrong_shape"),
              Fault(endpoint="catalog", page=4, kind="zero_systems")]
    with Simulator(Scenario(dataset=SMALL, faults=faults)) as sim:
        assert get(sim, f"{CATALOG}?page=1", None)[0] == 401
        assert get(sim, f"{CATALOG}?page=2", "Zoho-oauthtoken nope")[0] == 401
        assert get(sim, f"{CATALOG}?page=2")[0] == 503  # first authenticated attempt
        assert get(sim, f"{CATALOG}?page=2")[0] == 200
        assert get(sim, f"{PAGES}?page=2")[0] == 200  # a catalog fault is not a page fault
        shape = get_json(sim, f"{CATALOG}?page=3")
        assert shape["message_type"] == "patches" and "message_response" not in shape
        empty = get_json(sim, f"{CATALOG}?page=4")
        assert empty["message_response"]["patches"] == [] and empty["metadata"]["totalRecords"] > 0
        assert [r.fault for r in sim.requests if r.kind == "catalog"] == [
            None, None, "http_503", None, "wrong_shape", "zero_systems"]


def test_catalog_per_customer() -> None:
    scenario = Scenario(dataset=SMALL, customers={"Acme": DatasetSpec(managed_systems=20, seed=5)})
    with Simulator(scenario) as sim:
        served = sweep(sim, CATALOG, "patches", limit=200, customer="Acme")
        assert served == sim.catalog("Acme") != sim.catalog()
        assert sum(e["installed_system_count"] + e["missing_system_count"] for e in served) == sum(
            1 for _ in sim.expected_mappings("Acme"))
        bad = get_json(sim, f"{CATALOG}?page=1&customername=acme")
        assert bad == {"response_code": 400, "error_code": "10001", "error_description": "Invalid customer name"}


def test_a_catalog_sweep_of_the_default_tenant_builds_the_catalog_once(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    real_build = applicable_module.build_applicable

    def counting_build(ds: Any, estate: Any) -> Any:
        builds.append(estate.version)
        return real_build(ds, estate)

    monkeypatch.setattr(applicable_module, "build_applicable", counting_build)
    with Simulator(Scenario()) as sim:
        started = time.monotonic()
        entries = sweep(sim, CATALOG, "patches", limit=30)
        elapsed = time.monotonic() - started
        assert len(entries) == len(sim.catalog()) > 3000 and builds == [0]
        assert elapsed < 10, f"{elapsed:.1f} s for {len(entries) // 30 + 1} catalog pages"
        sim.mutate(flip_status={"count": 5})
        assert get_json(sim, f"{CATALOG}?page=1")["metadata"]["totalRecords"] == len(sim.catalog())
        assert builds == [0, 1]
