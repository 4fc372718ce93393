"""The SQLite file: created mode 0600 with its parent directories, refused before anything touches
it when it is not an SQLite database, switched to WAL, and a directory SQLite cannot create its
journal files in named as such (tried, not deduced from mode bits: root, read-only mounts and
ACLs defeat those)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path

from pmp_scrapy.errors import StorageError

logger = logging.getLogger(__name__)

_PRIVATE = stat.S_IRUSR | stat.S_IWUSR
SQLITE_HEADER = b"SQLite format 3\x00"


def open_in_this_process(path: Path) -> bool:
    """Whether a descriptor of this process (an SQLite connection's) has ``path`` open. Its
    header must not be read then: closing any descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's included, and another process closing its connection then takes
    itself for the last one and checkpoints and deletes the WAL under the live connection (a
    corrupt database). Linux's /proc/self/fd tells; elsewhere ``False``."""
    try:
        target = os.stat(path)
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in descriptors:
        try:
            held = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (held.st_dev, held.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _header(path: Path) -> bytes:
    """The file's first bytes; an SQLite header without reading when this process has it open
    (:func:`open_in_this_process`)."""
    if open_in_this_process(path):
        return SQLITE_HEADER
    with open(path, "rb") as handle:
        return handle.read(len(SQLITE_HEADER))


def is_sqlite_file(path: Path) -> bool:
    """Whether ``path`` is an SQLite database file (or an empty file, a new one)."""
    try:
        head = _header(path)
    except OSError:
        return False
    return head in (b"", SQLITE_HEADER)


def make_private(path: Path, *, known_sqlite: bool = False) -> None:
    """chmod 0600 the SQLite file and its -wal/-shm companions that exist; a file that is not an
    SQLite database is never touched. ``known_sqlite``: the caller has used it as one, so its
    header is not read (see :func:`open_in_this_process` for why reading it can hurt)."""
    if not known_sqlite and not is_sqlite_file(path):
        return
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if candidate.exists() and stat.S_IMODE(candidate.stat().st_mode) != _PRIVATE:
                os.chmod(candidate, _PRIVATE)
        except OSError as exc:
            logger.warning("could not make %s private: %s", candidate.name, exc.strerror)


def enable_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried within the busy timeout: while another job switches
    the same new file to WAL, SQLite answers "database is locked" at once, without waiting."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def directory_problem(path: Path) -> str | None:
    """Why SQLite cannot create its journal files beside ``path``, or ``None``. Tried, not
    deduced from the mode bits (root, read-only mounts and ACLs all defeat those)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".pmp-probe-", dir=path.parent)
    except OSError as exc:
        return (f"the directory {path.parent} must be writable (SQLite needs to create journal files "
                f"beside the database): {exc.strerror}")
    os.close(fd)
    os.unlink(probe)
    return None


def check_sqlite_file(path: Path) -> None:
    """Refuse a path that is not an SQLite database (an empty file is a new one) before
    anything touches it."""
    if not path.exists():
        return
    if not path.is_file():
        raise StorageError(f"{path} is not an SQLite database file (it is a directory or a device)")
    try:
        head = _header(path)
    except OSError as exc:
        raise StorageError(f"cannot read the database file {path}: {exc.strerror}") from None
    if head and head != SQLITE_HEADER:
        raise StorageError(f"{path} is not an SQLite database (it was left as it is); name another file "
                           "in PMP_DATABASE_URL")


def prepare_sqlite_file(path: Path) -> None:
    check_sqlite_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, _PRIVATE))
    except OSError as exc:
        problem = directory_problem(path) if path.parent.is_dir() else None
        raise StorageError(f"cannot create the database file {path}: {problem or exc.strerror}") from None
    make_private(path)
