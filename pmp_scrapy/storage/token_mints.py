"""Access-token mint times per client, shared by every run through the database, so that all
runs together stay within Zoho's 10 tokens per refresh token per 10 minutes (contract, "One run
per tenant"). Only times are kept, never a token.

``claim_mint`` is what a token refresher calls before asking Zoho: in one write transaction it
counts the client's mints in the window and either records the new mint (returns 0: go ahead)
or returns the seconds to wait. The transaction is serialised per client (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: a transaction advisory lock on the client key), so two runs can never
both take the tenth place. Rows older than the window are pruned as mints are recorded.

Writes the table ``dcapi_token_mints`` (``client_key``: a fingerprint of the client id, see
:func:`pmp_scrapy.storage.locks.fingerprint`; ``minted_at``: epoch seconds). Reads nothing from
Scrapy. Every function takes an open :class:`~sqlalchemy.Engine` (the run's) or a database URL
(opened, with the schema, and closed again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.engine import describe_error, open_engine, writer
from pmp_scrapy.storage.locks import advisory_key
from pmp_scrapy.storage.schema import token_mints
from pmp_scrapy.token_budget import budget_wait

__all__ = ["budget_wait", "claim_mint", "mints_since", "prune_mints", "record_mint"]

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

#: Zoho: at most 10 access tokens per refresh token in any 10 minutes.
ZOHO_BUDGET = 10
ZOHO_WINDOW = 600.0
#: Added to the window by ``claim_mint``: mint times come from the clocks of several hosts, and
#: Zoho counts by its own.
CLOCK_SLACK = 5.0

MINT_NAMESPACE = "pmp_scrapy token mints"


@contextlib.contextmanager
def _engine(engine_or_url: Engine | str) -> Iterator[Engine]:
    if not isinstance(engine_or_url, str):
        yield engine_or_url
        return
    engine = open_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def _transaction(engine_or_url: Engine | str, client_key: str | None = None) -> Iterator[Connection]:
    """A write transaction, serialised per ``client_key`` on PostgreSQL; database errors become
    one-line :class:`StorageError`."""
    try:
        with _engine(engine_or_url) as engine, writer(engine).begin() as conn:
            if client_key is not None and conn.dialect.name == "postgresql":
                namespace, key = advisory_key(MINT_NAMESPACE, client_key)
                conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": namespace, "key": key})
            yield conn
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot use the token mint times: {describe_error(exc)}") from None


def _since(conn: Connection, client_key: str, since: float) -> list[float]:
    query = (select(token_mints.c.minted_at)
             .where(token_mints.c.client_key == client_key, token_mints.c.minted_at >= since)
             .order_by(token_mints.c.minted_at))
    return [float(t) for t in conn.execute(query).scalars()]


def _record(conn: Connection, client_key: str, at: float, window: float) -> None:
    conn.execute(delete(token_mints).where(token_mints.c.minted_at < at - window))
    conn.execute(insert(token_mints).values(client_key=client_key, minted_at=at))


def mints_since(engine_or_url: Engine | str, client_key: str, since: float) -> list[float]:
    """The client's mint times at or after ``since`` (epoch seconds), oldest first."""
    with _transaction(engine_or_url) as conn:
        return _since(conn, client_key, since)


def record_mint(engine_or_url: Engine | str, client_key: str, at: float,
                window: float = ZOHO_WINDOW + CLOCK_SLACK) -> None:
    """Record a mint at ``at`` and prune every client's mints older than ``window`` before it."""
    with _transaction(engine_or_url, client_key) as conn:
        _record(conn, client_key, at, window)


def prune_mints(engine_or_url: Engine | str, before: float) -> int:
    """Delete the mint times older than ``before``; returns how many went."""
    with _transaction(engine_or_url) as conn:
        return conn.execute(delete(token_mints).where(token_mints.c.minted_at < before)).rowcount


def claim_mint(engine_or_url: Engine | str, client_key: str, now: float, budget: int = ZOHO_BUDGET,
               window: float = ZOHO_WINDOW + CLOCK_SLACK) -> float:
    """Take a place in the client's budget: record a mint at ``now`` and return 0, or record
    nothing and return the seconds to wait (then claim again). Atomic across runs."""
    with _transaction(engine_or_url, client_key) as conn:
        wait = budget_wait(_since(conn, client_key, now - window), now, budget, window)
        if wait == 0:
            _record(conn, client_key, now, window)
        return wait

