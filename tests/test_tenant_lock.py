"""One sweeping run per tenant, as cron and scrapyd see it (issue 15, item 4; contract, "One run
per tenant"): real ``scrapy crawl`` processes against one simulator whose pages take seconds. A
second run of the tenant while the first sweeps exits 0 at once, sends nothing and logs
``run_skipped`` naming since when, which host and which process hold the lock; after a SIGKILL
of the first, the lock is free and a third run sweeps to the end. On SQLite (a file lock beside
the database) and on PostgreSQL (an advisory lock; skipped with a reason when no server answers).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEN_PAGES, crawl_env, expected_table, scrapy_command, scrapy_env
from test_storage import database_url, postgres_url, url_mapping_table, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario, Simulator
from pmp_scrapy.storage.locks import LockHeld, acquire_tenant_lock, tenant_key

#: Pages that take a second, asked for one a second (FIRST_RUN): the first run's 30 pages of 10
#: (and its catalog) take well over half a minute, far longer than a run that starts and skips
#: takes on a loaded machine. The third run sweeps at full speed.
SLOW = Scenario(dataset=TEN_PAGES, latency=1.0)
FIRST_RUN = {"DOWNLOAD_DELAY": "1.0"}


def log_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def lock_is_free(url: str, tenant: str) -> bool:
    held = acquire_tenant_lock(url, tenant)
    if isinstance(held, LockHeld):
        return False
    held.release()
    return True


@pytest.mark.slow
def test_a_second_run_of_the_tenant_skips_at_once_and_a_sigkill_frees_the_lock(
        database_url: str, tmp_path: Path) -> None:  # noqa: F811
    with Simulator(scenario=SLOW) as sim:
        tenant = tenant_key(sim.url, DEMO_CREDENTIALS["client_id"])  # as every run of this tenant names it
        env = crawl_env(sim, database_url, PMP_BATCH_PAGES=0, PMP_CHECKPOINT_EVERY=2, PMP_PAGE_LIMIT=10)
        first_log = tmp_path / "first.log"
        started = datetime.now(UTC)
        with (tmp_path / "first.out").open("w") as out:
            first = subprocess.Popen([sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"], cwd=ROOT,
                                     env=scrapy_env({**env, **FIRST_RUN, "LOG_FILE": str(first_log)}),
                                     stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        try:
            # The first run holds the lock from before its first request (its token call) on. Its
            # inventory request follows the token a pace's spacing later (the simulator serves both
            # on one host, and requests to a paced host are spaced): wait for both.
            wait_for(lambda: any(r.kind == "inventory" for r in sim.requests) or first.poll() is not None, 90,
                     "the first run's token and inventory requests")
            assert first.poll() is None, (tmp_path / "first.out").read_text()[-2000:]
            assert not lock_is_free(database_url, tenant)

            # A second run meanwhile: exit 0 at once (the first still sweeps), not one request.
            begin = time.monotonic()  # the simulator's clock: it runs in this process
            second = scrapy_command(["crawl", "dcapi_patches"], env={**env, "LOG_FILE": str(tmp_path / "second.log")},
                                    timeout=120)
            end = time.monotonic()
            assert first.poll() is None, "the first run ended before the second: the overlap was not tested"
            assert second.returncode == 0, second.stderr[-2000:]
            # A run asks for a token, then its inventory, before any page: neither arrived while the
            # second ran (the first's came before it started), so the second sent nothing.
            arrived = [r.kind for r in sim.requests if begin <= r.t <= end]
            assert "token" not in arrived and "inventory" not in arrived, arrived
            assert [r.kind for r in sim.requests if r.kind == "token"] == ["token"]
            [line] = second.stdout.splitlines()
            assert line.startswith("pmp_scrapy: exit 0: another run of this tenant is in progress (held since ")
            assert f"by pid {first.pid} on {socket.gethostname()}" in line and line.endswith("this one sent nothing")
            assert second.stderr == ""
            records = log_records(tmp_path / "second.log")
            # run_skipped twice: the holder named, then the run's last line (exit 0, as every run ends).
            [skipped, finished] = [r for r in records if r.get("event_type") == "run_skipped"]
            assert finished["close_reason"] == "pmp_run_skipped" and "this one sent nothing" in finished["message"]
            assert (skipped["holder_pid"], skipped["holder_host"]) == (first.pid, socket.gethostname())
            since = datetime.fromisoformat(skipped["holder_since"])
            assert started - timedelta(seconds=2) <= since <= datetime.now(UTC)
            assert not [r for r in records if r.get("event_type") in ("batch_start", "token_refresh")]

            # SIGKILL: no chance to release anything; the OS (or PostgreSQL) frees the lock.
            first.send_signal(signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
            wait_for(lambda: lock_is_free(database_url, tenant), 15, "the lock to be freed after SIGKILL")
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(30)
        first_requests = len(sim.requests)

        # A third run proceeds (the same snapshot, resumed) and completes; no latency now.
        sim.set_scenario(Scenario(dataset=TEN_PAGES))
        third = scrapy_command(["crawl", "dcapi_patches"], env={**env, "LOG_FILE": str(tmp_path / "third.log")},
                               timeout=180)
        third_requests = sim.requests[first_requests:]
        expected = expected_table(sim)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "run_skipped" not in (tmp_path / "third.log").read_text()
    assert [r.kind for r in third_requests if r.kind == "token"] == ["token"]
    assert url_mapping_table(database_url) == expected
    assert url_rows(database_url, "SELECT state FROM dcapi_snapshots") == [("complete",)]
    assert [code for (code,) in url_rows(database_url, "SELECT exit_code FROM dcapi_runs")] == [0]  # killed: unrecorded
