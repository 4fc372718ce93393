"""A request as it travels from the HTTP handler to the Simulator, and as it is recorded."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .replies import Reply

SECRET_FIELDS = ("client_id", "client_secret", "refresh_token")


@dataclass(frozen=True)
class Incoming:
    """A parsed request: ``kind`` is its route ("page", "catalog", "token" ...), ``connection``
    the serial of its TCP connection and ``reused`` whether that connection served before."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]
    kind: str
    connection: int = 0
    reused: bool = False
    arrived: float | None = None  # when its first bytes reached the socket (monotonic), if known


@dataclass
class Meta:
    """What the Simulator learnt about a request while answering it: arrival time (monotonic
    and wall clock: when its first bytes reached the socket, see ``arrivals.py``), when the
    simulator got to it (``seen``, monotonic: later on a busy machine), authentication, page and
    customer."""

    t: float = 0.0
    wall: float = 0.0
    seen: float = 0.0
    auth: str = "none"
    page: int | None = None
    customer: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it. Never holds a secret or a token value.

    ``t`` is the arrival (monotonic: when its first bytes reached the socket), ``seen`` when the
    simulator had read and parsed it (monotonic: later than ``t`` by however long a busy machine
    took), ``answered`` when the answer was sent or the connection closed (monotonic),
    ``connection`` the serial of the TCP connection it came on.
    """

    t: float
    wall: float
    method: str
    path: str
    query: dict[str, str]
    kind: str
    page: int | None
    customer: str | None
    auth: str
    status: int
    fault: str | None
    form_fields: tuple[str, ...]
    query_has_secret: bool
    answered: float | None = None
    connection: int = 0
    seen: float | None = None


def record_of(inc: Incoming, meta: Meta, reply: Reply, answered: float) -> RecordedRequest:
    """The record of ``inc``, answered with ``reply`` at ``answered``; secrets in the query
    are redacted."""
    return RecordedRequest(
        t=meta.t, wall=meta.wall, method=inc.method, path=inc.path, kind=inc.kind,
        query={k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in inc.query.items()},
        page=meta.page, customer=meta.customer, auth=meta.auth,
        status=0 if reply.drop else reply.status, fault=reply.fault, form_fields=tuple(inc.form),
        query_has_secret=any(k in inc.query for k in SECRET_FIELDS), answered=answered,
        connection=inc.connection, seen=meta.seen)


def records_json(records: list[RecordedRequest]) -> bytes:
    """The /_sim/requests body."""
    return json.dumps([asdict(r) for r in records], ensure_ascii=False).encode("utf-8")
