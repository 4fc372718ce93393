"""Component tests of the store's concurrency handling: which database errors are transient, a
real lock timeout on PostgreSQL retried, and a snapshot id taken by another connection between
the store's read and its insert. The PostgreSQL cases skip with a reason when no server answers
at ``PMP_TEST_POSTGRES_URL`` (default 127.0.0.1:5432); every arrangement is made with locks
held on real connections, never with sleeps."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa
from psycopg import errors as pg_errors
from sqlalchemy.engine import make_url
from test_postgres import wait_for_lock_wait
from test_storage import postgres_url, url_rows  # noqa: F401 (fixture)

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage import Store
from pmp_scrapy.storage.engine import is_transient
from pmp_scrapy.storage.schema import snapshots

# --- which errors a fresh transaction can clear -------------------------------------------------------

@pytest.mark.parametrize(("error", "transient"), [
    (pg_errors.DeadlockDetected("deadlock detected"), True),  # 40P01
    (pg_errors.SerializationFailure("could not serialize access"), True),  # 40001
    (pg_errors.LockNotAvailable("canceling statement due to lock timeout"), True),  # 55P03
    (pg_errors.UniqueViolation("duplicate key value"), False),  # 23505: a real error
    (pg_errors.QueryCanceled("canceling statement due to statement timeout"), False),  # 57014
    (sqlite3.OperationalError("database is locked"), False),  # the busy timeout was already waited out
])
def test_postgres_concurrency_conflicts_are_transient_and_nothing_else_is(error: Exception, transient: bool) -> None:
    wrapped = sa.exc.OperationalError("UPDATE dcapi_snapshots SET page_limit = 1", {}, error)
    assert is_transient(wrapped) is transient
    assert is_transient(error) is transient  # unwrapped too
    if isinstance(error, pg_errors.Error):
        assert (error.sqlstate in ("40P01", "40001", "55P03")) is transient


# --- a real lock timeout ----------------------------------------------------------------------------------

class OnRetry(logging.Handler):
    """Calls ``action`` when the store logs that it retries a transaction (``db_retry``): the
    moment between a failed attempt and the next one."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.action = action
        self.retries: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event_type", None) == "db_retry":
            self.retries.append(record)
            self.action()


@pytest.fixture
def on_retry() -> Iterator[Callable[[Callable[[], None]], OnRetry]]:
    logger = logging.getLogger("pmp_scrapy.storage.store")
    handlers: list[OnRetry] = []

    def install(action: Callable[[], None]) -> OnRetry:
        handler = OnRetry(action)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield install
    for handler in handlers:
        logger.removeHandler(handler)


@pytest.mark.postgres
@pytest.mark.parametrize("released", [True, False])
def test_a_lock_timeout_on_postgres_is_retried_as_transient(
        postgres_url: str, on_retry: Callable[[Callable[[], None]], OnRetry], released: bool) -> None:  # noqa: F811
    """Another session holds the snapshot's row while the store writes it, and the database's
    lock_timeout is 100 ms: the write fails with 55P03 and the store runs it again. Released
    after the first failure, the second attempt commits; never released, the store gives up after
    its three attempts with one line naming the cause."""
    store = Store(postgres_url)
    snapshot = store.start_snapshot("", 30)
    store.close()  # new sessions from here on get the database's lock_timeout
    database = make_url(postgres_url).database
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"ALTER DATABASE \"{database}\" SET lock_timeout = '100ms'"))
    holder = admin.connect()
    holding = holder.begin()
    holder.execute(sa.text("UPDATE dcapi_snapshots SET page_limit = 1 WHERE snapshot_id = :id"), {"id": snapshot})
    retry = on_retry(holding.commit if released else (lambda: None))
    try:
        if released:
            store.set_managed_total(snapshot, 3317)
        else:
            with pytest.raises(StorageError) as info:
                store.set_managed_total(snapshot, 3317)
            assert str(info.value) == ("database error while saving the managed total: "
                                       "LockNotAvailable: canceling statement due to lock timeout")
    finally:
        if holding.is_active:
            holding.rollback()
        holder.close()
        store.close()
        admin.dispose()

    assert [r.attempt for r in retry.retries] == ([1] if released else [1, 2])
    assert all("LockNotAvailable" in r.getMessage() and r.levelno == logging.WARNING for r in retry.retries)
    expected = [(1, 3317)] if released else [(30, None)]  # the holder committed, or rolled back
    assert url_rows(postgres_url, "SELECT page_limit, managed_total FROM dcapi_snapshots") == expected


# --- the snapshot id taken by another connection -----------------------------------------------------------

@pytest.mark.postgres
def test_a_snapshot_id_taken_by_another_connection_is_allocated_again(postgres_url: str) -> None:  # noqa: F811
    """Another connection (not this project's code: it takes no advisory lock) inserts snapshot 2
    and has not committed when the store reads the highest id (1) and inserts 2: the store's
    insert waits for that transaction, which then commits, so the insert fails on the key
    (SnapshotIdConflict) and the store allocates again: 3. (On SQLite no other connection can
    write between the read and the insert: BEGIN IMMEDIATE holds the database's one write lock.)"""
    store = Store(postgres_url)
    first = store.start_snapshot("acme", 30)
    other = sa.create_engine(postgres_url)
    allocated: list[int | BaseException] = []

    def allocate() -> None:
        try:
            allocated.append(store.start_snapshot("globex", 30))
        except BaseException as exc:  # noqa: BLE001 - reported below
            allocated.append(exc)

    try:
        with other.connect() as conn:
            taking = conn.begin()
            conn.execute(sa.insert(snapshots).values(snapshot_id=first + 1, customer="initech", state="running",
                                                     page_limit=30, started_at=datetime(2026, 1, 1)))
            thread = threading.Thread(target=allocate)
            thread.start()
            wait_for_lock_wait(postgres_url)  # the store's insert of id 2 waits for this transaction
            taking.commit()
            thread.join(20)
    finally:
        store.close()
        other.dispose()
    assert allocated == [first + 2]
    assert url_rows(postgres_url, "SELECT snapshot_id, customer, state FROM dcapi_snapshots ORDER BY 1") == [
        (1, "acme", "running"), (2, "initech", "running"), (3, "globex", "running")]
