"""``scrapy status``: reads the database only, in a subprocess as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from conftest import THREE_PAGES, CrawlAgainst, scrapy_command

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator


def status(db_path: Path, *args: str) -> Any:
    return scrapy_command(["status", *args], env={"PMP_DATABASE_URL": f"sqlite:///{db_path}"}, timeout=60)


def status_json(db_path: Path, *args: str) -> dict[str, Any]:
    result = status(db_path, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_missing_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    db_path = tmp_path / "absent" / "pmp.db"
    result = status(db_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (f"pmp_scrapy: no database at {db_path}; "
                                     "run `scrapy crawl dcapi_patches` first")
    assert not db_path.parent.exists()  # never created
    machine = status(db_path, "--json")
    assert machine.returncode == 1
    assert json.loads(machine.stdout)["error"] == "no_database"


def test_database_without_extraction_tables_exit_1(tmp_path: Path) -> None:
    import sqlite3

    db_path = tmp_path / "other.db"
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE systems (id INTEGER)")
    result = status(db_path)
    assert result.returncode == 1
    assert "holds no extraction data yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_needs_no_pmp_settings(tmp_path: Path) -> None:
    """No PMP_BASE_URL, no credentials: status still answers (here: no database). The answer is
    the missing database's one line, so status got past every setting it does not need."""
    db_path = tmp_path / "x.db"
    result = status(db_path)
    assert "PMP_BASE_URL" not in result.stderr
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"pmp_scrapy: no database at {db_path}; run `scrapy crawl dcapi_patches` first"


@pytest_twisted.ensureDeferred
async def test_status_after_a_partial_sweep_then_a_healing_run(db_path: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=DatasetSpec(managed_systems=300, no_patch_share=0.2),
                        faults=[Fault(page=2, kind="http_503", attempts=(1, 2, 3))])
    with Simulator(scenario=scenario) as sim:
        first = await crawl_against(sim)
        assert first.exit_code == 2
        before = db_path.read_bytes()
        report = status_json(db_path)
        assert db_path.read_bytes() == before  # status writes nothing

        [customer] = report["customers"]
        assert customer["customer"] == ""
        assert customer["managed_systems"] == 300
        dcapi = customer["dcapi_systems"]
        assert dcapi is not None and dcapi < 300
        assert customer["systems_with_mappings"] == dcapi - 30  # page 2 is missing
        assert customer["coverage_of_managed_pct"] == round(100.0 * (dcapi - 30) / 300, 1)
        assert customer["coverage_of_dcapi_pct"] == round(100.0 * (dcapi - 30) / dcapi, 1)
        assert customer["dcapi_omits"] == 300 - dcapi
        assert customer["target"] == {"fraction": 0.95, "denominator": 300, "systems_needed": 285, "met": False}
        assert customer["snapshot"]["state"] == "complete"
        assert customer["checkpoint"]["last_page"] == customer["checkpoint"]["total_pages"]
        [gap] = customer["gaps"]["open"]
        assert (gap["page"], gap["error_type"], gap["attempts"], gap["http_status"]) == (2, "5xx_server_error", 3, 503)
        assert "503" in gap["last_error"]
        assert customer["gaps"]["resolved"] == []
        assert customer["last_run"]["exit_code"] == 2 and customer["last_run"]["finished_at"]

        text = status(db_path)
        assert text.returncode == 0
        assert "NOT MET" in text.stdout and "DCAPI does not report" in text.stdout
        assert "1 open, 0 resolved" in text.stdout and "page 2" in text.stdout

        second = await crawl_against(sim)
    assert second.exit_code == 2  # the gap healed, but DCAPI still omits systems
    customer = status_json(db_path)["customers"][0]
    assert customer["gaps"]["open"] == []
    assert [g["page"] for g in customer["gaps"]["resolved"]] == [2]
    assert customer["systems_with_mappings"] == dcapi


@pytest_twisted.ensureDeferred
async def test_status_lists_every_customer(db_path: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=THREE_PAGES, customers={"acme": DatasetSpec(managed_systems=60, no_patch_share=0.0)})
    with Simulator(scenario=scenario) as sim:
        for args in ({}, {"customer": "acme"}):
            result = await crawl_against(sim, **args)
            assert result.exit_code == 0
    report = status_json(db_path)
    by_name = {c["customer"]: c for c in report["customers"]}
    assert set(by_name) == {"", "acme"}
    assert by_name["acme"]["managed_systems"] == 60 and by_name["acme"]["target"]["met"] is True
    only = status_json(db_path, "--customer", "acme")
    assert [c["customer"] for c in only["customers"]] == ["acme"]
    text = status(db_path).stdout
    assert "customer: (default)" in text and "customer: acme" in text
