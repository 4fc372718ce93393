"""PostgreSQL specifics: session settings, a real deadlock retried by the store, and a database
that cannot be reached or does not exist failing as one line with exit code 1.

Uses the ``postgres_url`` fixture of ``test_storage`` (a fresh database per test, skipped with
"PostgreSQL not reachable at HOST:PORT: ..." when no server answers)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conftest import oauth_env, scrapy_command
from pmp_scrapy.errors import StorageError
from pmp_scrapy.simulator import Scenario, Simulator
from pmp_scrapy.storage import Store
from pmp_scrapy.storage.engine import is_transient
from test_storage import postgres_url, url_rows  # noqa: F401 (fixture)

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


def test_a_deadlocked_write_is_retried_and_commits(postgres_url: str) -> None:  # noqa: F811
    """The store's transaction waits first, so PostgreSQL's deadlock detector aborts it (40P01);
    the store runs it again once the other transaction is through, and it commits."""
    store = Store(postgres_url)
    store.open()
    store.start_snapshot("a", 30)
    store.start_snapshot("b", 30)
    holds_b = threading.Event()
    other_error: list[BaseException] = []
    attempts: list[int] = []

    def other() -> None:
        engine = sa.create_engine(postgres_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 1 WHERE snapshot_id = 1"))
                holds_b.wait(10)
                time.sleep(0.5)  # let the store start waiting for row 1 first
                conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 1 WHERE snapshot_id = 2"))
        except BaseException as exc:  # noqa: BLE001
            other_error.append(exc)
        finally:
            engine.dispose()

    def store_side(conn: sa.Connection) -> None:
        attempts.append(1)
        conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 2 WHERE snapshot_id = 2"))
        holds_b.set()
        conn.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 2 WHERE snapshot_id = 1"))

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.2)  # the other transaction holds row 1
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
        env = {**oauth_env(sim), "PMP_BASE_URL": sim.url, "PMP_ACCOUNTS_URL": sim.url,
               "PMP_DATABASE_URL": "postgresql+psycopg://pmp:s3cretPW@127.0.0.1:9/pmp",
               "LOG_FILE": str(tmp_path / "pmp.log")}
        result = scrapy_command(["crawl", "dcapi_patches"], env=env, timeout=90)
        pages = [r for r in sim.requests if r.kind == "page"]
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmp_scrapy: exit 1:"), result.stderr
    assert "s3cretPW" not in result.stderr + (tmp_path / "pmp.log").read_text()
    assert pages == []
