"""PostgreSQL specifics: session settings, a real deadlock retried by the store, and a database
that cannot be reached or does not exist failing as one line with exit code 1.

Uses the ``postgres_url`` fixture of ``test_storage`` (a fresh database per test, skipped with
"PostgreSQL not reachable at HOST:PORT: ..." when no server answers)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import crawl_env, scrapy_command
from sqlalchemy.engine import make_url
from test_storage import postgres_url, url_rows  # noqa: F401 (fixture)

from pmp_scrapy.errors import StorageError
from pmp_scrapy.simulator import Scenario, Simulator
from pmp_scrapy.storage import Store
from pmp_scrapy.storage.engine import is_transient

pytestmark = pytest.mark.postgres


def test_sessions_run_in_utc_and_name_themselves(postgres_url: str) -> None:  # noqa: F811
    store = Store(postgres_url)
    store.open()
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW timezone")).scalar() == "UTC"
            assert conn.execute(sa.text("SELECT current_setting('application_name')")).scalar() == "pmp_scrapy"
    finally:
        store.close()


def wait_for_lock_wait(url: str, application_name: str = "pmp_scrapy", timeout: float = 20) -> None:
    """Return once a session named ``application_name`` (the store's) waits for a lock in the
    database of ``url``, as PostgreSQL itself reports it; fail after ``timeout`` seconds."""
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while True:
                waiting = conn.execute(sa.text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = :name AND wait_event_type = 'Lock'"), {"name": application_name}).scalar()
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                if waiting:
                    return
                assert time.monotonic() < deadline, f"no {application_name} session waited for a lock"
                time.sleep(0.01)
    finally:
        engine.dispose()


def test_a_deadlocked_write_is_retried_and_commits(postgres_url: str) -> None:  # noqa: F811
    """The store's transaction waits first, so PostgreSQL's deadlock detector aborts it (40P01);
    the store runs it again once the other transaction is through, and it commits.

    Arranged by locks, not by sleeps: the other transaction holds row 1 before the store starts;
    the store takes row 2 and waits for row 1; only once PostgreSQL shows the store waiting does
    the other transaction ask for row 2, closing the cycle. PostgreSQL checks for a deadlock in a
    session deadlock_timeout after it began to wait: the store's check comes first, so the store
    is the one aborted."""
    store = Store(postgres_url)
    store.open()
    store.start_snapshot("a", 30)
    store.start_snapshot("b", 30)
    holds_row_1 = threading.Event()
    other_error: list[BaseException] = []
    attempts: list[int] = []

    def other() -> None:
        engine = sa.create_engine(postgres_url)  # not named pmp_scrapy: only the store's waits count
        try:
            with engine.begin() as conn:
                # The store's detector (the server default, 1 s) runs before this one (10 s): the
                # store is the one aborted. (deadlock_timeout is a superuser setting; without it the
                # store still waited first.)
                with contextlib.suppress(sa.exc.DBAPIError), conn.begin_nested():
                    conn.execute(sa.text("SET LOCAL deadlock_timeout = '10s'"))
                conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 1 WHERE snapshot_id = 1"))
                holds_row_1.set()
                wait_for_lock_wait(postgres_url)  # the store holds row 2 and waits for row 1
                conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 1 WHERE snapshot_id = 2"))
        except BaseException as exc:  # noqa: BLE001
            other_error.append(exc)
            holds_row_1.set()
        finally:
            engine.dispose()

    def store_side(conn: sa.Connection) -> None:
        attempts.append(1)
        conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 2 WHERE snapshot_id = 2"))
        conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 2 WHERE snapshot_id = 1"))

    thread = threading.Thread(target=other)
    thread.start()
    assert holds_row_1.wait(20)  # the other transaction holds row 1
    try:
        store._run("testing a deadlock", store_side)
    finally:
        thread.join(20)
        store.close()
    assert other_error == []
    assert len(attempts) == 2
    assert url_rows(postgres_url, "SELECT snapshot_id, page_limit FROM dcapi_snapshots ORDER BY 1") == [(1, 2), (2, 2)]


def test_transient_errors_are_only_postgres_conflicts() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            super().__init__("x")
            self.sqlstate = sqlstate

    class Wrapped(Exception):
        def __init__(self, orig: Exception) -> None:
            super().__init__("wrapped")
            self.orig = orig

    assert is_transient(Wrapped(Orig("40P01"))) and is_transient(Wrapped(Orig("40001")))
    assert not is_transient(Wrapped(Orig("23505")))  # unique violation: a real error
    assert not is_transient(Wrapped(Orig(None)))


def test_missing_postgres_database_is_one_line_exit_1(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    absent = make_url(postgres_url).set(database=make_url(postgres_url).database + "_absent")
    url = absent.set(password="s3cretPW").render_as_string(hide_password=False)
    result = scrapy_command(["status"], env={"PMP_DATABASE_URL": url}, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmp_scrapy: ") and "does not exist" in lines[0], result.stderr
    assert "s3cretPW" not in result.stderr + result.stdout
    # The store never creates a PostgreSQL database either: it says so and stops.
    with pytest.raises(StorageError, match="does not exist"):
        Store(url).open()


def test_crawl_into_unreachable_postgres_is_one_line_exit_1(tmp_path: Path) -> None:
    with Simulator(scenario=Scenario()) as sim:
        env = crawl_env(sim, "postgresql+psycopg://pmp:s3cretPW@127.0.0.1:9/pmp", LOG_FILE=tmp_path / "pmp.log")
        result = scrapy_command(["crawl", "dcapi_patches"], env=env, timeout=90)
        pages = [r for r in sim.requests if r.kind == "page"]
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmp_scrapy: exit 1:"), result.stderr
    assert "s3cretPW" not in result.stderr + (tmp_path / "pmp.log").read_text()
    assert pages == []
