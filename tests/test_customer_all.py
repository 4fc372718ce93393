"""All customers of an MSP server in one job (issue 15, item 5): ``-a customer=all`` and
``-a customer=Acme,Globex`` list the server's customers (``/api/1.4/desktop/customers``, paced and
authorised like any PMP request) and sweep each in turn in one ``scrapy crawl`` process, under one
token and one rate, each with its own exact data, snapshot, run and result line; the job's exit
code is the worst of the customers'. A name the server does not list is one line, exit 1, before
any sweep. The decisions are tested pure first, then real ``scrapy crawl`` subprocesses against
the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    crawl_env,
    expected_table,
    max_requests_in_window,
    scrapy_command,
    scrapy_env,
)
from test_storage import url_mapping_table, url_rows

from pmp_scrapy.customers import (
    CustomerListError,
    CustomerResult,
    CustomerSelection,
    job_message,
    not_swept,
    parse_selection,
    read_customer_list,
    resolve,
    worst_exit_code,
)
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.storage.locks import LockHeld, acquire_tenant_lock, tenant_key
from pmp_scrapy.summary import WIDTH, customers_summary

# Three customers of a few pages each (in the server's order), different data (seeds, prefixes).
CUSTOMERS = {"Acme": DatasetSpec(managed_systems=60, no_patch_share=0.0),
             "Globex": DatasetSpec(managed_systems=90, no_patch_share=0.0, seed=7, name_prefix="GLX"),
             "Initech": DatasetSpec(managed_systems=45, no_patch_share=0.0, seed=9, name_prefix="INI")}
PMP_KINDS = ("customers", "page", "inventory", "catalog")


# --- the decisions ----------------------------------------------------------------------------------------

def test_a_selection_is_all_or_a_comma_list_and_one_name_stays_one_customer() -> None:
    assert parse_selection(None) is None and parse_selection("Acme") is None  # one customer: as before
    assert parse_selection(" all ") == CustomerSelection(everyone=True, names=(), given="all")
    assert parse_selection("Acme, Globex,,Acme ,") == CustomerSelection(
        everyone=False, names=("Acme", "Globex"), given="Acme, Globex,,Acme ,")
    for bad in (",", " , ,"):
        with pytest.raises(ConfigError, match="comma-separated list"):
            parse_selection(bad)
    with pytest.raises(ConfigError, match="customer must be a customer name"):
        parse_selection("Acme,x" + "y" * 300)


def test_the_named_customers_must_be_listed_exactly() -> None:
    listed = ["Acme", "Globex", "Initech"]
    assert resolve(parse_selection("all"), listed) == listed
    assert resolve(parse_selection("Initech,Acme"), listed) == ["Initech", "Acme"]  # the order given
    assert resolve(parse_selection("Smith, Jones"), ["Smith, Jones", "Acme"]) == ["Smith, Jones"]  # a comma in a name
    with pytest.raises(ConfigError) as error:
        resolve(parse_selection("Acme,Umbrella,globex"), listed)
    message = str(error.value)
    assert "\n" not in message and message.startswith("customer: 'Umbrella', 'globex' are not customers")
    assert "'Acme', 'Globex', 'Initech'" in message and "case-sensitive" in message
    assert "did you mean 'Globex' for 'globex'?" in message
    many = [f"Customer {k:02d}" for k in range(25)]
    with pytest.raises(ConfigError, match=r"'Customer 09' and 15 more"):
        resolve(parse_selection("Nobody,Customer 01"), many)


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def test_the_customer_list_is_read_tolerantly() -> None:
    customers = [{"customer_id": 1, "customer_name": "Acme"}, {"customer_id": 2, "customer_name": "Globex"},
                 {"customer_id": 3}, {"customer_name": ""}, {"customer_name": 7}, "junk",
                 {"customer_id": 4, "customer_name": "Acme"}]
    assert read_customer_list(200, body({"message_response": {"customers": customers}})) == ["Acme", "Globex"]
    for status, answer, why in (
            (404, b"<html>Not Found</html>", "HTTP 404"),
            (200, b"<html>busy</html>", "not JSON"),
            (200, body([1, 2]), "an array, not an object"),
            (200, body({"error_code": "10022", "error_description": "API Endpoint is not supported by current "
                                                                    "server"}), "not an MSP edition"),
            (200, body({"message_response": {}}), "customers is missing"),
            (200, body({"message_response": {"customers": []}}), "lists no customers")):
        with pytest.raises(CustomerListError, match=why):
            read_customer_list(status, answer)


def test_the_job_exit_code_is_the_worst_of_its_customers() -> None:
    assert worst_exit_code([0, 0, 0]) == 0
    assert worst_exit_code([0, 2, 0]) == 2
    assert worst_exit_code([2, 1, 0]) == 1
    assert worst_exit_code([0, 7]) == 1  # unknown: fatal
    results = [CustomerResult("Acme", 0, "batch done", 4, 0, 0, 4528, 60, 60, True),
               CustomerResult("Globex", 2, "1 page(s) ended as gaps", 2, 1, 0, 3000, 60, 90, False),
               not_swept("Initech", "the job stopped before it")]
    assert job_message(results) == "3 customer(s): 1 done, 1 partial (Globex), 1 not swept (Initech)"
    summary = customers_summary(exit_code=2, message=job_message(results), results=results,
                                database="sqlite:////var/lib/pmp/pmp.db", status_command="scrapy status")
    lines = summary.splitlines()
    assert lines[0] == "pmp_scrapy: exit 2 (partial)"
    assert lines[1].split() == ["customers", "3", "customer(s):", "1", "done,", "1", "partial", "(Globex),", "1", "not", "swept", "(Initech)"]
    assert all(len(line) <= WIDTH for line in lines), summary
    assert [line.split()[0] for line in lines[1:] if line[2] != " "] == [
        "customers", "Acme", "Globex", "Initech", "data", "next"]
    text = " ".join(summary.split())
    assert "Acme exit 0 (done): 4 pages, 0 new gap(s), 4,528 mappings, 60 of 60 systems (100.00%)" in text
    assert "1 page(s) ended as gaps" in text and "Initech exit 2 (partial): not swept: the job stopped before it" in text


# --- real jobs --------------------------------------------------------------------------------------------

def crawl(sim: Simulator, db: Path, tmp_path: Path, customer: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    env = crawl_env(sim, db, PMP_BATCH_PAGES=0, LOG_FILE=tmp_path / "pmp.log", **settings)
    return scrapy_command(["crawl", "dcapi_patches", "-a", f"customer={customer}"], env=env, timeout=240)


def pmp_requests(sim: Simulator) -> list[Any]:
    return [r for r in sim.requests if r.kind in PMP_KINDS]


def log_events(tmp_path: Path, event_type: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "pmp.log").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("event_type") == event_type]


def test_customer_all_sweeps_every_customer_with_its_exact_data_under_one_token(tmp_path: Path) -> None:
    """At the contract's pace (DOWNLOAD_DELAY 0.25): the customer list, then each customer in
    the server's order, one after another, each exact; one token for the whole job; never more
    than 4 PMP requests in a second, across the customers' boundaries too."""
    db = tmp_path / "pmp.db"
    with Simulator(scenario=Scenario(customers=CUSTOMERS)) as sim:
        result = crawl(sim, db, tmp_path, "all", DOWNLOAD_DELAY=0.25)
        requests = sim.requests
        expected = {name: expected_table(sim, name) for name in CUSTOMERS}
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines[:3]] == ["customer Acme", "customer Globex", "customer Initech"]
    assert all(": exit 0: batch done" in line for line in lines[:3]), lines
    assert lines[3] == "pmp_scrapy: exit 0: 3 customer(s): 3 done"

    url = f"sqlite:///{db}"
    for name in CUSTOMERS:
        assert url_mapping_table(url, name) == expected[name], name
    assert sum(len(rows) for rows in expected.values()) == url_rows(url, "SELECT COUNT(*) FROM patch_system_mapping")[0][0]
    assert sorted(url_rows(url, "SELECT customer, state FROM dcapi_snapshots")) == [
        ("Acme", "complete"), ("Globex", "complete"), ("Initech", "complete")]
    assert sorted(url_rows(url, "SELECT customer, exit_code FROM dcapi_runs")) == [
        ("Acme", 0), ("Globex", 0), ("Initech", 0)]

    # One token for the whole job (and its one mint is in Zoho's budget shared through the database).
    assert [r.kind for r in requests if r.kind == "token"] == ["token"]
    assert url_rows(url, "SELECT COUNT(*) FROM dcapi_token_mints") == [(1,)]
    pmp = [r for r in requests if r.kind in PMP_KINDS]
    assert pmp[0].kind == "customers" and pmp[0].auth == "oauth" and pmp[0].customer is None
    assert all(r.auth == "oauth" for r in pmp)
    # Customer after customer, in the server's order, each request naming its customer.
    order = [r.customer for r in pmp[1:]]
    assert order == sorted(order, key=list(CUSTOMERS).index), order
    assert all(r.query.get("customername") == r.customer for r in pmp[1:])
    # One rate budget: never 5 PMP requests in any one-second window, as the server saw them.
    assert max_requests_in_window([r.t for r in pmp], window=1.0) <= 4
    assert len(log_events(tmp_path, "customers_listed")) == 1


def test_a_comma_list_sweeps_just_those_in_its_order_and_exits_with_the_worst_code(tmp_path: Path) -> None:
    db = tmp_path / "pmp.db"
    scenario = Scenario(customers=CUSTOMERS, faults=[Fault(customer="Acme", page=2, kind="http_503")])
    with Simulator(scenario=scenario) as sim:
        result = crawl(sim, db, tmp_path, "Initech, Acme")
        requests = sim.requests
        initech = expected_table(sim, "Initech")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pmp_scrapy: customer Initech: exit 0: batch done")
    assert lines[1].startswith("pmp_scrapy: customer Acme: exit 2: 1 page(s) ended as gaps")
    assert lines[2:] == ["pmp_scrapy: exit 2: 2 customer(s): 1 done, 1 partial (Acme)"]
    swept = [r.customer for r in requests if r.kind in ("page", "inventory", "catalog")]
    assert set(swept) == {"Initech", "Acme"} and swept.index("Acme") > max(
        k for k, name in enumerate(swept) if name == "Initech")
    assert [r.kind for r in requests if r.kind == "token"] == ["token"]
    url = f"sqlite:///{db}"
    assert url_mapping_table(url, "Initech") == initech
    assert url_mapping_table(url, "Globex") == {}
    assert sorted(url_rows(url, "SELECT customer, exit_code FROM dcapi_runs")) == [("Acme", 2), ("Initech", 0)]


def test_an_unknown_customer_is_one_line_and_exit_1_before_any_sweep(tmp_path: Path) -> None:
    db = tmp_path / "pmp.db"
    with Simulator(scenario=Scenario(customers=CUSTOMERS)) as sim:
        result = crawl(sim, db, tmp_path, "Acme,Umbrella,globex")
        kinds = [r.kind for r in sim.requests]
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("pmp_scrapy: error: customer: 'Umbrella', 'globex' are not customers of this PMP server")
    assert "did you mean 'Globex' for 'globex'?" in line
    assert kinds == ["token", "customers"]  # the list was asked for; no customer was swept
    assert url_rows(f"sqlite:///{db}", "SELECT COUNT(*) FROM patch_system_mapping") == [(0,)]
    assert url_rows(f"sqlite:///{db}", "SELECT customer, exit_code, close_reason FROM dcapi_runs") == [
        ("", 1, "pmp_config_error")]


def test_customer_all_on_a_server_without_customers_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with Simulator(scenario=Scenario()) as sim:
        result = crawl(sim, tmp_path / "pmp.db", tmp_path, "all")
        kinds = [r.kind for r in sim.requests]
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "pmp_scrapy: exit 1: cannot list the customers of the PMP server: the server lists no customers"]
    assert kinds == ["token", "customers"]


def test_customer_all_skips_at_once_without_a_request_while_another_run_holds_the_tenant(tmp_path: Path) -> None:
    db = tmp_path / "pmp.db"
    with Simulator(scenario=Scenario(customers=CUSTOMERS)) as sim:
        key = tenant_key(sim.url, DEMO_CREDENTIALS["client_id"])  # as every run of this tenant names it
        lock = acquire_tenant_lock(f"sqlite:///{db}", key)
        try:
            result = crawl(sim, db, tmp_path, "all")
        finally:
            lock.release()  # type: ignore[union-attr]
        requests = sim.requests
    assert result.returncode == 0, result.stderr[-2000:]
    assert requests == []
    [line] = result.stdout.splitlines()
    assert line.startswith("pmp_scrapy: exit 0: another run of this tenant is in progress (held since ")
    assert line.endswith("; this one sent nothing")
    [skipped] = log_events(tmp_path, "run_skipped")
    assert skipped["holder_pid"] is not None and skipped["holder_host"]



def test_the_job_holds_the_tenant_lock_between_its_customers(tmp_path: Path) -> None:
    """One lock for the job's life: a second run of the tenant started after the first customer's
    run is over and before the second's opens (tests/lock_probe.py runs it at that moment) exits
    0 at once with run_skipped and sends nothing; the job sweeps all three, and frees the lock."""
    db = tmp_path / "pmp.db"
    probe = tmp_path / "second_run.json"
    with Simulator(scenario=Scenario(customers=CUSTOMERS)) as sim:
        env = crawl_env(sim, db, PMP_BATCH_PAGES=0, LOG_FILE=tmp_path / "pmp.log", LOCK_PROBE_OUT=probe,
                        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", SCRAPY_SETTINGS_MODULE="lock_probe")
        result = scrapy_command(["crawl", "dcapi_patches", "-a", "customer=all"], env=env, timeout=240)
        requests = sim.requests
        key = tenant_key(sim.url, DEMO_CREDENTIALS["client_id"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "pmp_scrapy: exit 0: 3 customer(s): 3 done", (result.stdout, result.stderr[-2000:])
    second = json.loads(probe.read_text())
    assert second["code"] == 0, second
    assert second["stdout"].startswith("pmp_scrapy: exit 0: another run of this tenant is in progress (held since ")
    skipped = [r for r in map(json.loads, Path(f"{probe}.log").read_text().splitlines())
               if r.get("event_type") == "run_skipped"]
    assert any(r.get("holder_pid") is not None for r in skipped), skipped
    # The job's requests only: one token, the list, each customer once; the second run sent nothing.
    assert [r.kind for r in requests if r.kind in ("token", "customers")] == ["token", "customers"]
    globex = [r.page for r in requests if r.kind == "page" and r.customer == "Globex"]
    assert sorted(globex) == list(range(1, 4))
    held = acquire_tenant_lock(f"sqlite:///{db}", key)  # the job freed it when it ended
    assert not isinstance(held, LockHeld)
    held.release()


def test_a_signal_stops_the_job_once_the_customer_in_progress_recorded_its_run(tmp_path: Path) -> None:
    """SIGTERM while the second customer sweeps: its crawl stops as a one-customer job's would
    (its own PromptStop handles the signal: the handlers are put back before each crawl), exit 2
    for it; the third customer is not swept; the job exits 2."""
    customers = {**CUSTOMERS, "Globex": DatasetSpec(managed_systems=300, no_patch_share=0.0, seed=7)}
    db = tmp_path / "pmp.db"
    with Simulator(scenario=Scenario(customers=customers, latency=0.5)) as sim:
        env = crawl_env(sim, db, PMP_BATCH_PAGES=0, PMP_PAGE_LIMIT=10, LOG_FILE=tmp_path / "pmp.log")
        job = subprocess.Popen([sys.executable, "-m", "scrapy", "crawl", "dcapi_patches", "-a", "customer=all"],
                               cwd=ROOT, env=scrapy_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not any(r.customer == "Globex" and r.kind == "page" for r in sim.requests):
                assert job.poll() is None and time.monotonic() < deadline, "Globex's sweep never started"
                time.sleep(0.05)
            job.send_signal(signal.SIGTERM)
            stdout, stderr = job.communicate(timeout=90)
        finally:
            if job.poll() is None:
                job.kill()
        swept = {r.customer for r in sim.requests if r.kind in ("page", "inventory", "catalog")}
    assert job.returncode == 2, stderr[-3000:]
    assert stdout == ""
    acme, globex, initech, job_line = stderr.splitlines()
    assert acme.startswith("pmp_scrapy: customer Acme: exit 0: batch done")
    assert globex == ("pmp_scrapy: customer Globex: exit 2: the run was interrupted (shutdown); the next run "
                      "resumes from the checkpoint")
    assert initech == "pmp_scrapy: customer Initech: exit 2: not swept: the job stopped before it (see the customer before)"
    assert job_line == "pmp_scrapy: exit 2: 3 customer(s): 1 done, 1 partial (Globex), 1 not swept (Initech)"
    assert swept == {"Acme", "Globex"}
    [stop] = log_events(tmp_path, "stop_requested")
    assert stop["customer"] == "Globex"
    assert sorted(url_rows(f"sqlite:///{db}", "SELECT customer, exit_code FROM dcapi_runs")) == [
        ("Acme", 0), ("Globex", 2)]
