"""Puts the ``dcapi_v_*`` views (:mod:`pmp_scrapy.storage.views` defines them) in the database:
:func:`create_views` is called by :func:`pmp_scrapy.storage.engine.open_engine` in its schema
transaction; it reads ``sqlite_master`` / ``pg_class`` and writes views only. A view whose
definition is current is left alone (two jobs opening at once are safe); a changed one is
replaced."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from pmp_scrapy.storage.views import VIEWS, view_ddl

if TYPE_CHECKING:
    from sqlalchemy import Connection

logger = logging.getLogger("pmp_scrapy.storage.views")

_PG_MARK = "pmp_scrapy view "


def _fingerprint(ddl: str) -> str:
    return _PG_MARK + hashlib.sha256(ddl.encode()).hexdigest()[:16]


def _present(conn: Connection) -> dict[str, str | None]:
    """Our views in the database -> what identifies their definition (SQLite: the CREATE text;
    PostgreSQL: the fingerprint in the view's comment)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.relkind = 'v' AND c.relnamespace = current_schema()::regnamespace "
            "AND c.relname LIKE 'dcapi\\_v\\_%'"))
    else:
        rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'view' AND name LIKE 'dcapi_v_%'"))
    return {str(name): marker for name, marker in rows}


def create_views(conn: Connection) -> list[str]:
    """Create the ``dcapi_v_*`` views that are absent or whose definition differs from this
    version's; returns the names written (``[]`` when all were up to date).

    Runs in the caller's transaction (``open_engine``'s, which SQLite's ``BEGIN IMMEDIATE`` or
    PostgreSQL's advisory lock serialises), so jobs opening the database together do not race:
    the later one finds the views current. A changed definition is dropped and recreated.
    PostgreSQL: ``CREATE OR REPLACE VIEW`` first (keeps a user's views built on ours); when the
    columns changed incompatibly, drop ours and recreate; if a user's view still depends on
    them, log a WARNING and keep the old ones rather than fail the run."""
    dialect = conn.dialect.name
    wanted = {view.name: view_ddl(view, dialect) for view in VIEWS}
    present = _present(conn)
    if dialect == "postgresql":
        stale = [name for name, ddl in wanted.items() if present.get(name) != _fingerprint(ddl)]
    else:
        stale = [name for name, ddl in wanted.items() if present.get(name) != ddl]
    if not stale:
        return []
    if dialect == "postgresql":
        _replace_postgresql(conn, wanted, present)
    else:
        for name in reversed(list(wanted)):
            if name in present:
                conn.execute(text(f"DROP VIEW {name}"))
        for ddl in wanted.values():
            conn.execute(text(ddl))
    logger.info("SQL views created or replaced: %s", ", ".join(stale),
                extra={"event_type": "views_created", "views": stale})
    return stale


def _replace_postgresql(conn: Connection, wanted: dict[str, str], present: dict[str, str | None]) -> None:
    def comment_all() -> None:
        for name, ddl in wanted.items():
            conn.execute(text(f"COMMENT ON VIEW {name} IS '{_fingerprint(ddl)}'"))

    try:
        with conn.begin_nested():
            for ddl in wanted.values():
                conn.execute(text(ddl.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)))
            comment_all()
        return
    except SQLAlchemyError:
        pass  # columns renamed, removed or retyped: drop and recreate below
    try:
        with conn.begin_nested():
            for name in reversed(list(wanted)):
                if name in present:
                    conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
            for ddl in wanted.values():
                conn.execute(text(ddl))
            comment_all()
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", exc)
        logger.warning("the dcapi_v_* views could not be replaced (%s); the previous definitions stay, "
                       "and may disagree with scrapy report until the objects depending on them are dropped",
                       str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__,
                       extra={"event_type": "views_not_replaced"})
