"""One tenant's shared limits across runs: the run lock (``storage.locks``) and the token mint
times (``storage.token_mints``), on SQLite and PostgreSQL (``database_url`` of test_storage;
the PostgreSQL cases skip with a reason when no server answers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT
from test_storage import database_url, postgres_url, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.storage.locks import LockHeld, TenantLock, acquire_tenant_lock, lock_path, tenant_key
from pmp_scrapy.storage.token_mints import budget_wait, claim_mint, mints_since, prune_mints, record_mint

TENANT = tenant_key("https://patch.manageengine.com.au", "1000.CLIENTID")
OTHER = tenant_key("https://patch.manageengine.eu", "1000.CLIENTID")


# --- tenant keys ---------------------------------------------------------------------------------------

def test_a_tenant_is_a_host_and_a_fingerprint_of_the_credential_never_the_credential() -> None:
    secret = "1000.S3CRET-API-KEY"
    key = tenant_key("https://Patch.ManageEngine.com.au/", secret)
    assert key == tenant_key("https://patch.manageengine.com.au", secret)  # stable, case-blind host
    assert key.startswith("patch.manageengine.com.au/") and secret not in key
    assert len(key.split("/", 1)[1]) == 16
    assert key != tenant_key("https://patch.manageengine.com.au", "1000.OTHER")
    assert tenant_key("https://pmp.local:8383", secret).startswith("pmp.local:8383/")


# --- the run lock ----------------------------------------------------------------------------------------

def take(url: str, tenant: str = TENANT) -> TenantLock:
    lock = acquire_tenant_lock(url, tenant)
    assert isinstance(lock, TenantLock), lock
    return lock


def assert_held_by(held: TenantLock | LockHeld, pid: int) -> None:
    assert isinstance(held, LockHeld), held
    assert (held.pid, held.host) == (pid, socket.gethostname())
    assert held.since is not None and abs(datetime.now(UTC) - held.since) < timedelta(minutes=1)
    assert f"by pid {pid} on {socket.gethostname()}" in held.describe()


def test_a_second_acquisition_sees_the_holder_until_it_releases(database_url: str) -> None:  # noqa: F811
    with take(database_url) as lock:
        assert_held_by(acquire_tenant_lock(database_url, TENANT), os.getpid())
        with take(database_url, OTHER):  # another tenant is not excluded
            pass
        assert lock.held
    assert not lock.held
    take(database_url).release()
    lock.release()  # twice is harmless


@pytest.fixture
def holder(database_url: str) -> Iterator[subprocess.Popen[str]]:  # noqa: F811
    """A process holding TENANT's lock (it says "held" once it has it)."""
    script = ("import sys, time\n"
              "from pmp_scrapy.storage.locks import TenantLock, acquire_tenant_lock\n"
              "lock = acquire_tenant_lock(sys.argv[1], sys.argv[2])\n"
              "print('held' if isinstance(lock, TenantLock) else 'busy', flush=True)\n"
              "time.sleep(300)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", script, database_url, TENANT], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait(10)


def test_a_killed_holder_frees_the_lock(database_url: str, holder: subprocess.Popen[str]) -> None:  # noqa: F811
    assert_held_by(acquire_tenant_lock(database_url, TENANT), holder.pid)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    deadline = time.monotonic() + 10  # PostgreSQL ends the backend once it sees the socket close
    while isinstance(lock := acquire_tenant_lock(database_url, TENANT), LockHeld):
        assert time.monotonic() < deadline, lock
        time.sleep(0.05)
    lock.release()


def test_the_sqlite_lock_file_is_private_beside_the_database_and_names_no_secret(tmp_path: Path) -> None:
    secret = "1000.S3CRET-API-KEY"
    tenant = tenant_key("https://pmp.local:8383", secret)
    database = tmp_path / "pmp.db"
    with take(f"sqlite:///{database}", tenant):
        path = lock_path(database, tenant)
        assert path.parent == tmp_path and path.name.startswith("pmp.db.") and path.suffix == ".lock"
        assert path.stat().st_mode & 0o777 == 0o600
        content = path.read_text()
        assert tenant in content and secret not in content
    assert not isinstance(acquire_tenant_lock(f"sqlite:///{database}", tenant), LockHeld)


def test_in_memory_sqlite_has_nothing_to_share() -> None:
    take("sqlite://").release()


# --- token mint times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mints", "now", "wait"), [
    ([], 1000.0, 0.0),
    ([100.0 + k for k in range(9)], 200.0, 0.0),  # nine in the window: the tenth may go
    ([100.0 + k for k in range(10)], 200.0, 500.0),  # ten: wait until the first is 600 s old
    ([100.0 + k for k in range(10)], 700.0, 0.0),  # the first is exactly 600 s old: out
    ([0.0] * 5 + [100.0 + k for k in range(10)], 650.0, 50.0),  # old mints do not count
    ([100.0 + k for k in range(12)], 650.0, 52.0),  # more than the budget: the 10th newest decides
])
def test_budget_wait(mints: list[float], now: float, wait: float) -> None:
    assert budget_wait(mints, now) == pytest.approx(wait)


def test_budget_wait_takes_the_budget_and_window_given() -> None:
    assert budget_wait([10.0, 20.0], 25.0, budget=2, window=30.0) == pytest.approx(15.0)


def test_mints_are_recorded_read_and_pruned_per_client(database_url: str) -> None:  # noqa: F811
    for at in (1000.0, 1100.0, 1200.0):
        record_mint(database_url, "client-a", at)
    record_mint(database_url, "client-b", 1150.0)
    assert mints_since(database_url, "client-a", 1100.0) == [1100.0, 1200.0]
    assert mints_since(database_url, "client-b", 0.0) == [1150.0]
    record_mint(database_url, "client-a", 1800.0)  # prunes every client's mints over 605 s old
    assert mints_since(database_url, "client-a", 0.0) == [1200.0, 1800.0]
    assert mints_since(database_url, "client-b", 0.0) == []
    assert prune_mints(database_url, before=1500.0) == 1
    assert url_rows(database_url, "SELECT client_key, minted_at FROM dcapi_token_mints") == [("client-a", 1800.0)]


def test_claims_from_concurrent_runs_never_exceed_the_budget(database_url: str) -> None:  # noqa: F811
    """Twelve runs ask at once; ten get a place, two are told how long to wait."""
    claim_mint(database_url, "warm-up", 0.0)  # the schema exists before the race starts
    waits: list[float] = []
    start = threading.Barrier(12)

    def run() -> None:
        start.wait()
        waits.append(claim_mint(database_url, "client-a", 5000.0))

    threads = [threading.Thread(target=run) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(waits) == [0.0] * 10 + [pytest.approx(605.0)] * 2
    assert len(mints_since(database_url, "client-a", 0.0)) == 10
