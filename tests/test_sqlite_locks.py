"""SQLite's locks survive everything the store does to the file while it has it open.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included. Once the store (or anything in its process) had opened and closed the database file by
hand while a connection was open (reading its header, say), the next process to close a
connection to it, ``scrapy status`` during a crawl, took itself for the last one: it checkpointed
and deleted the WAL under the crawl's live connection, and the database ended "malformed"
(seen in a SIGKILL test under load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pmp_scrapy.storage import Store
from pmp_scrapy.storage.status import read_status


def read_and_close_elsewhere(path: Path) -> None:
    """Another process opens the database, reads and closes it, as ``scrapy status`` would."""
    code = ("import sqlite3, sys\nconn = sqlite3.connect(sys.argv[1])\n"
            "conn.execute('SELECT COUNT(*) FROM dcapi_snapshots').fetchone()\nconn.close()")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)


def test_another_process_closing_its_connection_leaves_the_live_store_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "pmp.db"
    store = Store(f"sqlite:///{path}", busy_timeout=5)
    store.open()
    try:
        store.start_snapshot("", 30)  # a write: the WAL holds it, the pool keeps the connection
        wal = Path(f"{path}-wal")
        assert wal.exists()
        read_and_close_elsewhere(path)
        assert wal.exists(), "another process took itself for the last connection: the store's locks were dropped"
        read_status(f"sqlite:///{path}")  # this process reading status beside the open store changes nothing
        read_and_close_elsewhere(path)
        assert wal.exists()
        assert store.load_state("").snapshot_id is not None
    finally:
        store.close()
    assert (path.stat().st_mode & 0o777) == 0o600
