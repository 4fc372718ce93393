"""Errors that say what to do (issue 14, point 4), as cron and scrapyd see them: each path ends
with exit 1, one line naming the cause, a JSON line in LOG_FILE and a row in dcapi_runs; a run
that fails authentication abandons nothing."""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import crawl_env, db_rows, json_log_lines, scrapy_command

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

SMALL = DatasetSpec(managed_systems=90, no_patch_share=0.0)


def exit_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("pmp_scrapy: e")]
    return line


def last_run(db_path: Path) -> tuple[int, str, str]:
    return db_rows(db_path, "SELECT exit_code, close_reason, message FROM dcapi_runs ORDER BY run_id DESC LIMIT 1")[0]


def test_a_bad_setting_reaches_the_log_file_and_dcapi_runs(tmp_path: Path, db_path: Path) -> None:
    log = tmp_path / "pmp.log"
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        assert scrapy_command(["crawl", "dcapi_patches"], env=crawl_env(sim, db_path)).returncode == 0
        result = scrapy_command(["crawl", "dcapi_patches", "-s", "PMP_PAGE_LIMIT=abc", "-s", f"LOG_FILE={log}"],
                                env=crawl_env(sim, db_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert exit_line(result.stderr) == "pmp_scrapy: error: PMP_PAGE_LIMIT must be a positive integer, got 'abc'"
    [record] = [r for r in json_log_lines(log) if r["event_type"] == "config_error"]
    assert record["level"] == "ERROR" and "PMP_PAGE_LIMIT" in record["message"]
    assert last_run(db_path) == (1, "pmp_config_error", "PMP_PAGE_LIMIT must be a positive integer, got 'abc'")


def test_a_wrong_customer_name_is_a_configuration_error_not_a_gap(tmp_path: Path, db_path: Path) -> None:
    log = tmp_path / "pmp.log"
    with Simulator(scenario=Scenario(dataset=SMALL, customers={"Acme": SMALL})) as sim:
        result = scrapy_command(["crawl", "dcapi_patches", "-a", "customer=acme", "-s", f"LOG_FILE={log}"],
                                env=crawl_env(sim, db_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = exit_line(result.stderr)
    assert "'acme'" in line and "Invalid customer name" in line and "case-sensitive" in line
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
    assert [r for r in json_log_lines(log) if r["event_type"] == "run_aborted"]
    code, reason, message = last_run(db_path)
    assert (code, reason) == (1, "pmp_config_error") and "Invalid customer name" in message


def test_bad_credentials_stop_at_once_and_a_reset_abandons_nothing(tmp_path: Path, db_path: Path) -> None:
    log = tmp_path / "pmp.log"
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = scrapy_command(["crawl", "dcapi_patches", "-s", "PMP_BATCH_PAGES=1"], env=crawl_env(sim, db_path))
        assert first.returncode == 0
        sim.set_scenario(Scenario(dataset=SMALL, token_faults=[Fault(kind="invalid_code")]))
        sim.reset_requests()
        result = scrapy_command(["crawl", "dcapi_patches", "-a", "reset=1", "-s", f"LOG_FILE={log}"],
                                env=crawl_env(sim, db_path))
        tokens = [r for r in sim.requests if r.kind == "token"]
        pages = [r for r in sim.requests if r.kind == "page"]
    assert result.returncode == 1 and len(tokens) == 1 and pages == []
    assert "check PMP_CLIENT_ID, PMP_CLIENT_SECRET and PMP_REFRESH_TOKEN" in exit_line(result.stderr)
    assert db_rows(db_path, "SELECT snapshot_id, state FROM dcapi_snapshots") == [(1, "running")]
    assert [r for r in json_log_lines(log) if r["event_type"] == "snapshot_undone"]
    assert last_run(db_path)[:2] == (1, "pmp_token_refresh_failed")


def test_an_unreachable_accounts_server_is_named(tmp_path: Path, db_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        env = {**crawl_env(sim, db_path), "PMP_ACCOUNTS_URL": f"http://127.0.0.1:{port}", "PMP_BACKOFF_BASE": "0.05"}
        result = scrapy_command(["crawl", "dcapi_patches"], env=env)
    assert result.returncode == 1
    assert f"the Zoho accounts server 127.0.0.1:{port} is unreachable" in exit_line(result.stderr)
    assert last_run(db_path)[:2] == (1, "pmp_token_refresh_failed")


def test_a_fatal_run_is_never_logged_as_target_met() -> None:
    """Issue 14: a run that met the coverage target but ended fatally (database, token) is a
    ``batch_complete`` event with exit 1, which an alert on batch_complete catches."""
    from pmp_scrapy.outcome import RunFacts, decide_outcome

    facts = RunFacts(close_reason="pmp_database_error", abort_message="database error while committing a batch",
                     gaps_open=0, gaps_resolved=0, pages_committed=3, mappings_upserted=90, snapshot_complete=True,
                     coverage=90, total_systems=90, total_records=90, target=0.95, target_met=True)
    outcome = decide_outcome(facts)
    assert (outcome.exit_code, outcome.event) == (1, "batch_complete")
    assert outcome.message == "database error while committing a batch"
