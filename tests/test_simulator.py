"""Fast tests of the PMP simulator itself, through real HTTP with urllib only."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Fault, Scenario, Simulator

PAGES = "/dcapi/threats/systemreport/patches"
ROOT = Path(__file__).resolve().parents[1]
SMALL = DatasetSpec(managed_systems=100, no_patch_share=0.1)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Scenario(dataset=SMALL)) as s:
        yield s


def token_request(sim: Simulator, **override: str) -> dict[str, Any]:
    form = {"grant_type": "refresh_token", "client_id": DEMO_CREDENTIALS["client_id"],
            "client_secret": DEMO_CREDENTIALS["client_secret"],
            "refresh_token": DEMO_CREDENTIALS["refresh_token"], **override}
    body = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(sim.url + "/oauth/v2/token", body, timeout=5) as r:
        assert r.status == 200
        reply: dict[str, Any] = json.load(r)
        return reply


def get(sim: Simulator, path: str, auth: str | None = DEMO_CREDENTIALS["api_key"]
        ) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": auth} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(sim.url + path, headers=headers),
                                    timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(sim: Simulator, path: str, auth: str | None = DEMO_CREDENTIALS["api_key"]) -> Any:
    """GET ``path`` and parse the body as JSON (whatever the status)."""
    return json.loads(get(sim, path, auth)[2].decode("utf-8"))


def sweep(sim: Simulator, path: str, entity: str, limit: int = 30, customer: str | None = None
          ) -> list[dict[str, Any]]:
    """Every entry of the paged /dcapi endpoint ``path`` (``message_response.<entity>``)."""
    extra = f"&customername={urllib.parse.quote(customer)}" if customer else ""
    entries: list[dict[str, Any]] = []
    page, pages = 1, 1
    while page <= pages:
        doc = get_json(sim, f"{path}?page={page}&pageLimit={limit}{extra}")
        pages = doc["metadata"]["totalPages"]
        entries += doc["message_response"][entity]
        page += 1
    return entries


def test_page_envelope_and_content_type(sim: Simulator) -> None:
    status, headers, body = get(sim, f"{PAGES}?page=1&pageLimit=30")
    assert status == 200 and headers["Content-Type"] == "text/plain;charset=UTF-8"
    doc = json.loads(body.decode("utf-8"))
    meta = doc["metadata"]
    assert (meta["page"], meta["pageLimit"]) == (1, 30)
    assert meta["totalRecords"] == len(sim.dcapi_system_ids()) < sim.managed_total() == 100
    assert meta["totalPages"] == sim.total_pages(30)
    assert meta["links"]["prev"] is None and "page=2" in meta["links"]["next"]
    assert doc["response_code"] == 200 and doc["message_type"] == "systemreport"
    systems = doc["message_response"]["systemreport"]
    assert len(systems) == 30
    patch = systems[0]["patches"][0]
    assert set(patch) == {"patch_id", "patchname", "severity", "patch_status", "bulletinid",
                          "vendor_name", "installed_time"}
    last = json.loads(get(sim, f"{PAGES}?page={meta['totalPages']}&pageLimit=30")[2])
    assert last["metadata"]["links"]["next"] is None
    past = json.loads(get(sim, f"{PAGES}?page=99&pageLimit=30")[2])
    assert past["message_response"]["systemreport"] == []


def test_token_flow_and_errors(sim: Simulator) -> None:
    tok = token_request(sim)
    assert tok["expires_in"] == 3600 and tok["token_type"] == "Bearer"
    assert get(sim, f"{PAGES}?page=1", "Zoho-oauthtoken " + tok["access_token"])[0] == 200
    assert get(sim, f"{PAGES}?page=1", "Zoho-oauthtoken nope")[0] == 401
    assert get(sim, f"{PAGES}?page=1", None)[0] == 401
    assert token_request(sim, client_secret="wrong") == {"error": "invalid_code"}
    assert token_request(sim, grant_type="password") == {"error": "unsupported_grant_type"}
    rec = next(r for r in sim.requests if r.kind == "token")
    assert rec.form_fields == ("grant_type", "client_id", "client_secret", "refresh_token")
    assert not rec.query_has_secret
    assert [r.auth for r in sim.requests if r.kind == "page"] == ["oauth", "invalid", "none"]
    assert sim.issued_tokens == [tok["access_token"]]
    assert tok["access_token"] not in repr(sim.requests)


def test_access_denied_after_ten_tokens(sim: Simulator) -> None:
    tokens = [token_request(sim) for _ in range(10)]
    assert all("access_token" in t for t in tokens)
    denied = token_request(sim)
    assert denied["error"] == "Access Denied"
    assert sim.tokens_issued == 10


def test_token_expiry_and_revoke() -> None:
    with Simulator(Scenario(dataset=SMALL, token_ttl=1)) as sim:
        tok = token_request(sim)
        assert tok["expires_in"] == 1
        auth = "Zoho-oauthtoken " + tok["access_token"]
        assert get(sim, f"{PAGES}?page=1", auth)[0] == 200
        time.sleep(1.1)
        status, _, body = get(sim, f"{PAGES}?page=1", auth)
        assert status == 401 and json.loads(body)["error_code"] == "10002"
        fresh = "Zoho-oauthtoken " + token_request(sim)["access_token"]
        sim.revoke_tokens()
        assert get(sim, f"{PAGES}?page=1", fresh)[0] == 401 and not sim.valid_tokens()


def test_faults_by_attempt(sim: Simulator) -> None:
    sim.set_scenario(Scenario(dataset=SMALL, faults=[
        Fault(page=2, attempts=(1, 2), kind="http_503"),
        Fault(page=3, attempts=(1,), kind="http_429", retry_after="1"),
        Fault(page=4, attempts="all", kind="truncated_200"),
        Fault(page=5, attempts=(1,), kind="drop"),
    ]))
    status, _, body = get(sim, f"{PAGES}?page=2")
    assert status == 503 and b"admin@example.com" in body and b"2001:db8::1" in body
    assert get(sim, f"{PAGES}?page=2")[0] == 503
    assert get(sim, f"{PAGES}?page=2")[0] == 200
    status, headers, _ = get(sim, f"{PAGES}?page=3")
    assert status == 429 and headers["Retry-After"] == "1"
    status, _, body = get(sim, f"{PAGES}?page=4")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(sim.url).netloc, timeout=5)
    conn.request("GET", f"{PAGES}?page=5", headers={"Authorization": DEMO_CREDENTIALS["api_key"]})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()
    assert get(sim, f"{PAGES}?page=5")[0] == 200
    faults = [(r.page, r.status, r.fault) for r in sim.requests]
    assert faults[-2] == (5, 0, "drop") and faults[0] == (2, 503, "http_503")


def test_unauthorised_requests_do_not_consume_fault_attempts(sim: Simulator) -> None:
    sim.set_scenario(Scenario(dataset=SMALL, faults=[Fault(page=1, attempts=(1,), kind="http_500")]))
    assert get(sim, f"{PAGES}?page=1", "Zoho-oauthtoken expired")[0] == 401
    assert get(sim, f"{PAGES}?page=1")[0] == 500


def test_inventory_customers_and_unknown_customer() -> None:
    scenario = Scenario(dataset=SMALL, customers={"Acme": DatasetSpec(managed_systems=40)})
    with Simulator(scenario) as sim:
        inv = json.loads(get(sim, "/api/1.4/som/computers?page=1&pagelimit=1")[2])
        assert inv["message_response"]["total"] == 100 and len(inv["message_response"]["computers"]) == 1
        custs = json.loads(get(sim, "/api/1.4/desktop/customers")[2])
        assert [c["customer_name"] for c in custs["message_response"]["customers"]] == ["Acme"]
        page = json.loads(get(sim, f"{PAGES}?page=1&customername=Acme")[2])
        ids = {str(s["resource_id"]) for s in page["message_response"]["systemreport"]}
        assert ids <= set(sim.dcapi_system_ids("Acme")) and min(map(int, ids)) > 1_000_000
        assert get(sim, f"{PAGES}?page=1&customername=Nobody")[0] == 400


def test_expected_mappings_match_served_pages() -> None:
    with Simulator(Scenario(dataset=DatasetSpec(managed_systems=400))) as sim:
        served: dict[tuple[str, str], dict[str, Any]] = {}
        for page in range(1, sim.total_pages(30) + 1):
            doc = json.loads(get(sim, f"{PAGES}?page={page}&pageLimit=30")[2])
            for system in doc["message_response"]["systemreport"]:
                for p in system["patches"]:
                    fields = {k: v for k, v in p.items() if k != "patch_id"}
                    served[(str(system["resource_id"]), str(p["patch_id"]))] = fields
        expected = {(r, p): f for r, p, f in sim.expected_mappings()}
        assert expected == served and len(expected) > 400 * 10


def test_determinism_for_a_seed() -> None:
    a = Simulator(Scenario(dataset=SMALL), seed=7)
    b = Simulator(Scenario(dataset=SMALL), seed=7)
    c = Simulator(Scenario(dataset=SMALL), seed=8)
    assert list(a.expected_mappings()) == list(b.expected_mappings())
    assert list(a.expected_mappings()) != list(c.expected_mappings())


def test_scenario_json_round_trip() -> None:
    sc = Scenario(faults=Scenario.random_transient_faults(20, 15, seed=1), token_ttl=5,
                  mutations=[{"after_page_requests": 3, "add_systems": 2}])
    again = Scenario.from_dict(json.loads(json.dumps(sc.to_dict())))
    assert again == sc
    per_page: dict[int | None, list[int]] = {}
    for f in sc.faults:
        assert isinstance(f.attempts, tuple)
        per_page.setdefault(f.page, []).extend(f.attempts)
    assert all(sorted(a) in ([1], [1, 2]) for a in per_page.values())
    with pytest.raises(ValueError):
        Scenario.from_dict({"faults": [{"kind": "nonsense"}]})


def test_subprocess_prints_url_first_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pmp_scrapy.simulator", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("PMP simulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1]
        assert DEMO_CREDENTIALS["client_secret"] not in proc.stdout.readline()
        with urllib.request.urlopen(url + "/_sim/info", timeout=5) as r:
            assert json.load(r)["managed_total"] == 3317
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = subprocess.run([sys.executable, "-m", "pmp_scrapy.simulator", "--scenario", str(bad)],
                         check=False, capture_output=True, text=True, env=env, timeout=10)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
