"""Tenants: MSP customers, and tenant changes between runs (``mutate``, ``POST /_sim/mutate``)
and mid-run (scenario ``mutations``). Everything the simulator serves must follow the change."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from test_simulator import PAGES, get, get_json, sweep

from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

INVENTORY = "/api/1.4/som/computers"
ESTATE = DatasetSpec(managed_systems=120, no_patch_share=0.0)  # every system in DCAPI, 4 pages of 30
Mappings = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Scenario(dataset=ESTATE)) as s:
        yield s


def served_mappings(sim: Simulator, customer: str | None = None) -> Mappings:
    """Every distinct mapping a sweep of the system report gets now."""
    served: Mappings = {}
    for system in sweep(sim, PAGES, "systemreport", limit=30, customer=customer):
        for p in system["patches"]:
            key = (str(system["resource_id"]), str(p["patch_id"]))
            served.setdefault(key, {k: v for k, v in p.items() if k != "patch_id"})
    return served


def expected(sim: Simulator, customer: str | None = None) -> Mappings:
    return {(r, p): f for r, p, f in sim.expected_mappings(customer)}


def assert_served_as_expected(sim: Simulator, customer: str | None = None) -> None:
    """The system report, inventory and catalog all show the current state."""
    assert served_mappings(sim, customer) == expected(sim, customer)
    ids = sim.dcapi_system_ids(customer)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)  # page order is id order
    extra = f"&customername={urllib.parse.quote(customer)}" if customer else ""
    inventory = get_json(sim, f"{INVENTORY}?page=1&pagelimit=1000{extra}")["message_response"]
    assert inventory["total"] == sim.managed_total(customer) == len(inventory["computers"])
    assert set(ids) <= {str(c["resource_id"]) for c in inventory["computers"]}
    first = get_json(sim, f"{PAGES}?page=1&pageLimit=30{extra}")["metadata"]
    assert (first["totalRecords"], first["totalPages"]) == (len(ids), sim.total_pages(30, customer))
    counts: dict[str, list[int]] = {}
    for (_rid, pid), f in expected(sim, customer).items():
        counts.setdefault(pid, [0, 0])[f["patch_status"] != "Installed"] += 1
    assert {str(e["patch_id"]): [e["installed_system_count"], e["missing_system_count"]]
            for e in sim.catalog(customer)} == counts


def status_changes(before: Mappings, after: Mappings) -> dict[str, int]:
    flips = {"to_installed": 0, "to_missing": 0}
    for key, f in after.items():
        if key in before and before[key]["patch_status"] != f["patch_status"]:
            flips["to_installed" if f["patch_status"] == "Installed" else "to_missing"] += 1
    return flips


def test_customers_are_listed_and_names_are_exact() -> None:
    customers = {"Acme": DatasetSpec(managed_systems=40), "Globex Corp": DatasetSpec(managed_systems=30)}
    with Simulator(Scenario(dataset=ESTATE, customers=customers)) as sim:
        listed = get_json(sim, "/api/1.4/desktop/customers")["message_response"]["customers"]
        assert listed == [{"customer_id": 1, "customer_name": "Acme"},
                          {"customer_id": 2, "customer_name": "Globex Corp"}]
        invalid = {"response_code": 400, "error_code": "10001", "error_description": "Invalid customer name"}
        for path in (PAGES + "?page=1", INVENTORY + "?page=1", "/dcapi/threats/patches?page=1"):
            for wrong in ("acme", "ACME", "1", "Acme%20"):
                status, _, body = get(sim, f"{path}&customername={wrong}")
                assert (status, json.loads(body)) == (400, invalid)
            assert get(sim, f"{path}&customername=Globex%20Corp")[0] == 200
        assert_served_as_expected(sim, "Globex Corp")
        ranges = [{int(i) // 1_000_000 for i in sim.dcapi_system_ids(c)} for c in (None, "Acme", "Globex Corp")]
        assert ranges == [{0}, {1}, {2}]  # disjoint resource-id ranges


@pytest.mark.parametrize("where", ["front", "middle", "end"])
def test_systems_added_sort_into_place_with_fresh_ids(sim: Simulator, where: str) -> None:
    sim.mutate(remove_systems={"count": 3, "where": where})  # leaves used ids without systems
    before = sim.dcapi_system_ids()
    managed = sim.managed_total()
    sim.mutate(add_systems={"count": 12, "where": where})
    after = sim.dcapi_system_ids()
    new = [i for i in after if i not in before]
    assert sim.managed_total() == managed + 12 and len(new) == 12
    assert not {int(i) for i in new} & set(range(10001, 10001 + 10 * 120, 10))  # never reused
    positions = [after.index(i) for i in new]
    if where == "front":
        assert positions == list(range(len(new)))
    elif where == "end":
        assert positions == list(range(len(after) - len(new), len(after)))
    else:
        assert len(after) * 0.3 < min(positions) and max(positions) < len(after) * 0.7
    assert_served_as_expected(sim)


@pytest.mark.parametrize("where", ["front", "middle", "end"])
def test_systems_removed_at_a_position_or_by_id(sim: Simulator, where: str) -> None:
    ids = sim.dcapi_system_ids()
    sim.mutate(remove_systems={"count": 20, "where": where})
    left = sim.dcapi_system_ids()
    assert sim.managed_total() == 100 and len(left) == len(ids) - 20
    gone = [i for i in ids if i not in left]
    start = {"front": 0, "middle": (120 - 20) // 2, "end": 100}[where]
    assert gone == ids[start:start + 20]
    sim.mutate(remove_systems={"resource_ids": [left[5], int(left[-1])]})
    assert sim.dcapi_system_ids() == [i for i in left if i not in (left[5], left[-1])]
    with pytest.raises(ValueError, match="resource id"):
        sim.mutate(remove_systems={"resource_ids": [gone[0]]})
    assert_served_as_expected(sim)


def test_flip_status_by_count_flips_exactly_that_many_pairs(sim: Simulator) -> None:
    before = expected(sim)
    sim.mutate(flip_status={"count": 25})
    after = expected(sim)
    assert set(after) == set(before) and status_changes(before, after) == {"to_installed": 25, "to_missing": 25}
    for f in after.values():
        assert (f["patch_status"] == "Installed") == (f["installed_time"] is not None)
    sim.mutate(flip_status={"count": 7, "direction": "to_missing"})
    assert status_changes(after, expected(sim)) == {"to_installed": 0, "to_missing": 7}
    assert_served_as_expected(sim)


def test_flip_status_by_share(sim: Simulator) -> None:
    before = expected(sim)
    sim.mutate(flip_status={"share": 0.1, "direction": "to_installed"})
    after = expected(sim)
    flips = status_changes(before, after)
    missing = sum(1 for f in before.values() if f["patch_status"] == "Missing")
    assert flips["to_missing"] == 0 and 0.07 * missing < flips["to_installed"] < 0.13 * missing
    assert all((f["patch_status"] == "Installed") == bool(f["installed_time"]) for f in after.values())
    assert_served_as_expected(sim)


def test_patches_added_and_removed(sim: Simulator) -> None:
    before = expected(sim)
    sim.mutate(add_patches={"systems": 6, "per_system": 3})
    added = expected(sim)
    new = set(added) - set(before)
    assert set(before) <= set(added) and len(new) == 18 and len({rid for rid, _ in new}) == 6
    assert all(added[k]["patch_status"] == "Missing" and added[k]["installed_time"] is None for k in new)
    sim.mutate(remove_patches={"systems": 4, "per_system": 2})
    removed = set(added) - set(expected(sim))
    assert len(removed) == 8 and len({rid for rid, _ in removed}) == 4 and set(expected(sim)) <= set(added)
    assert_served_as_expected(sim)


def test_a_system_emptied_of_patches_leaves_dcapi_but_not_the_inventory() -> None:
    with Simulator(Scenario(dataset=DatasetSpec(managed_systems=3, no_patch_share=0.0))) as sim:
        ids = sim.dcapi_system_ids()
        sim.mutate(remove_patches={"systems": 3, "per_system": 1000})
        assert sim.dcapi_system_ids() == [] and sim.managed_total() == 3 and ids
        assert sim.catalog() == [] and get_json(sim, f"{PAGES}?page=1")["metadata"]["totalRecords"] == 0


def test_mid_run_mutations_follow_page_requests() -> None:
    scenario = Scenario(dataset=ESTATE, mutations=[
        {"after_page_requests": 2, "add_systems": {"count": 30, "where": "front"}},
        {"after_page_requests": 3, "remove_systems": {"count": 10, "where": "middle"},
         "flip_status": {"count": 5}, "add_patches": {"systems": 2}}])
    with Simulator(scenario) as sim:
        first = get_json(sim, f"{PAGES}?page=1&pageLimit=30")["message_response"]["systemreport"]
        assert get_json(sim, f"{PAGES}?page=2&pageLimit=30")["metadata"]["totalRecords"] == 120
        moved = get_json(sim, f"{PAGES}?page=2&pageLimit=30")["message_response"]["systemreport"]
        assert [s["resource_id"] for s in moved] == [s["resource_id"] for s in first]  # shifted by 30
        assert sim.managed_total() == len(sim.dcapi_system_ids()) == 140
        assert_served_as_expected(sim)


def test_mutate_over_http_and_determinism(sim: Simulator) -> None:
    change = {"add_systems": {"count": 4, "where": "middle"}, "flip_status": {"count": 3},
              "remove_patches": {"systems": 2, "per_system": 1}}
    body = json.dumps(change).encode()
    with urllib.request.urlopen(urllib.request.Request(sim.url + "/_sim/mutate", body, method="POST"),
                                timeout=5) as r:
        assert json.load(r) == {"ok": True}
    twin = Simulator(Scenario(dataset=ESTATE))
    twin.mutate(**change)
    assert expected(twin) == expected(sim) and twin.catalog() == sim.catalog()
    for bad in ({"after_page_requests": 1, "add_systems": 1}, {"add_systems": {"count": 1, "where": "top"}},
                {"customer": "Nobody", "add_systems": 1}, {}, {"flip_status": {"share": 2}}):
        req = urllib.request.Request(sim.url + "/_sim/mutate", json.dumps(bad).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400 and "error" in json.load(err.value)
    assert expected(twin) == expected(sim)  # refused changes changed nothing


def test_mutating_the_default_tenant_is_cheap() -> None:
    with Simulator(Scenario()) as sim:
        started = time.monotonic()
        sim.mutate(add_systems={"count": 50, "where": "middle"}, remove_systems={"count": 40, "where": "end"},
                   flip_status={"count": 200}, add_patches={"systems": 20, "per_system": 2})
        sim.mutate(flip_status={"share": 0.01})
        assert time.monotonic() - started < 2
        assert sim.managed_total() == 3317 + 10
        started = time.monotonic()
        for page in range(1, 6):
            assert get(sim, f"{PAGES}?page={page}&pageLimit=30")[0] == 200
        assert time.monotonic() - started < 1.5


def test_scenario_json_round_trip_with_every_new_field() -> None:
    sc = Scenario(latency=0.5, latency_jitter=0.2, latency_per_system=0.01, catalog="unsupported",
                  rate_limit={"max_per_second": 4, "reply": "html_200"}, drop_reused={"every": 3},
                  customers={"Acme": DatasetSpec(managed_systems=5)},
                  mutations=[{"after_page_requests": 1, "customer": "Acme", "add_systems": {"count": 2, "where": "front"},
                              "remove_systems": {"resource_ids": [1000011]}, "flip_status": {"share": 0.5},
                              "add_patches": {"systems": 1, "per_system": 2}, "remove_patches": {"systems": 1}}])
    again = Scenario.from_dict(json.loads(json.dumps(sc.to_dict())))
    assert again == sc
    for bad in ({"catalog": "maybe"}, {"rate_limit": {"max_per_second": 0}}, {"rate_limit": {"reply": "429"}},
                {"drop_reused": {"every": 0}}, {"latency_jitter": -1},
                {"mutations": [{"add_systems": 1}]}, {"mutations": [{"after_page_requests": 1}]},
                {"faults": [{"kind": "http_503", "endpoint": "nowhere"}]}):
        with pytest.raises(ValueError):
            Scenario.from_dict(bad)
