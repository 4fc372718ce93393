"""What the summary counts, read from the roll-ups (:mod:`.rollup`) instead of every mapping:
per system from ``dcapi_system_rollup`` (~N rows), per (patch, severity) and per SLA from
``dcapi_missing_pairs`` through its covering indexes. Read-only, through a
:class:`~.report_reader.Reader`; :mod:`.reports` turns the tallies into the answer.

Timestamps are compared in the type the driver holds them in (PostgreSQL: datetime; SQLite:
text, which orders like the time: both writers use ``YYYY-MM-DD HH:MM:SS[.ffffff]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pmp_scrapy.reporting.codes import SEVERITIES, SEVERITY_RANKS
from pmp_scrapy.storage.report_reader import Reader, Scope
from pmp_scrapy.storage.rollup import column_of

_KNOWN = ", ".join(f"'{name}'" for name in SEVERITIES)
_SYSTEM_COLUMNS = ("resource_id", "missing_other", "oldest_missing_since",
                   *(f"missing_{column_of(name)}" for name in SEVERITIES),
                   *(f"oldest_{column_of(name)}_since" for name in SEVERITIES))


@dataclass
class SystemTally:
    """One system's missing patches in scope: counts and oldest "missing since" per severity."""

    by_severity: dict[str, int] = field(default_factory=dict)
    oldest_by_severity: dict[str, Any] = field(default_factory=dict)
    missing: int = 0
    oldest: Any = None
    past_sla: set[str] = field(default_factory=set)  # severities with a pair past its SLA


@dataclass
class PatchTally:
    """One patch's missing systems in scope, per severity name: (systems, oldest missing since)."""

    groups: dict[str, tuple[int, Any]] = field(default_factory=dict)

    @property
    def systems(self) -> int:
        return sum(count for count, _ in self.groups.values())

    @property
    def severity(self) -> str:
        """The severity most of its missing rows carry (a patch normally has one)."""
        return max(self.groups, key=lambda name: (self.groups[name][0], SEVERITY_RANKS.get(name, -1), name))


class Deadlines:
    """Per severity with an SLA in scope: the moment before which a missing pair is past it."""

    def __init__(self, reader: Reader, scope: Scope, now: datetime) -> None:
        shown = set(scope.severities or SEVERITIES)
        moments = {name: now - timedelta(days=days) for name, days in scope.sla_days.items() if name in shown}
        self.values: dict[str, Any] = ({name: m for name, m in moments.items()} if reader.dialect == "postgresql"
                                       else {name: m.isoformat(sep=" ") for name, m in moments.items()})

    def past(self, severity: str, since: Any) -> bool:
        limit = self.values.get(severity)
        return limit is not None and since is not None and since < limit

    def condition(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition on ``dcapi_missing_pairs``: the pair is past its severity's SLA."""
        if not self.values:
            return "1 = 0", {}
        parts = [f"(severity_name = :sla_name_{i} AND missing_since < :sla_limit_{i})" for i in range(len(self.values))]
        params: dict[str, Any] = {}
        for i, (name, limit) in enumerate(self.values.items()):
            params[f"sla_name_{i}"], params[f"sla_limit_{i}"] = name, limit
        return "(" + " OR ".join(parts) + ")", params


def systems(reader: Reader, scope: Scope, deadlines: Deadlines) -> dict[str, SystemTally]:
    """The customer's systems missing something in scope, from ``dcapi_system_rollup``; words no
    severity alias knows (rare) are counted from ``dcapi_missing_pairs``."""
    chosen = scope.severities or SEVERITIES
    tallies: dict[str, SystemTally] = {}
    other = False
    index = {name: i for i, name in enumerate(_SYSTEM_COLUMNS)}
    columns = [(name, index[f"missing_{column_of(name)}"], index[f"oldest_{column_of(name)}_since"],
                deadlines.values.get(name)) for name in chosen]
    others, oldest = index["missing_other"], index["oldest_missing_since"]
    for row in reader.stream(f"SELECT {', '.join(_SYSTEM_COLUMNS)} FROM dcapi_system_rollup "
                             "WHERE customer = :customer AND missing > 0", customer=scope.customer):
        tally = SystemTally()
        for name, count_at, since_at, limit in columns:
            count = row[count_at]
            if count:
                since = row[since_at]
                tally.by_severity[name] = count
                tally.oldest_by_severity[name] = since
                tally.missing += count
                if limit is not None and since is not None and since < limit:
                    tally.past_sla.add(name)
        if scope.severities:
            tally.oldest = min((s for s in tally.oldest_by_severity.values() if s is not None), default=None)
        elif row[others]:
            tally.missing += row[others]
            other = True
        if not scope.severities:
            tally.oldest = row[oldest]
        if tally.missing:
            tallies[row[0]] = tally
    if other:
        for rid, name, count in reader.stream(
                "SELECT resource_id, severity_name, COUNT(*) FROM dcapi_missing_pairs WHERE customer = :customer "
                f"AND severity_name NOT IN ({_KNOWN}) GROUP BY resource_id, severity_name", customer=scope.customer):
            tallies[rid].by_severity[name] = count
    return tallies


def patches(reader: Reader, scope: Scope) -> dict[str, PatchTally]:
    """Per patch missing in scope: its systems and oldest "missing since" per severity name
    (``dcapi_missing_pairs``, a covering scan of ``idx_dcapi_missing_patch``)."""
    where, params = reader.severity_filter(scope)
    tallies: dict[str, PatchTally] = {}
    for pid, name, count, oldest in reader.stream(
            "SELECT patch_id, severity_name, COUNT(*), MIN(missing_since) FROM dcapi_missing_pairs "
            f"WHERE customer = :customer{where} GROUP BY patch_id, severity_name", customer=scope.customer, **params):
        tally = tallies.get(pid)
        if tally is None:
            tally = tallies[pid] = PatchTally()
        tally.groups[name] = (count, oldest)
    return tallies


def pairs_past_sla(reader: Reader, scope: Scope, deadlines: Deadlines) -> dict[str, int]:
    """Severity -> missing pairs past its SLA, in one statement: SQLite counts a range of
    ``idx_dcapi_missing_age`` per severity (a multi-index OR); PostgreSQL, which scans the
    pairs for a range that wide, scans them once instead of once per severity."""
    counts = {name: 0 for name in deadlines.values}
    condition, params = deadlines.condition()
    for name, count in reader.stream(
            f"SELECT severity_name, COUNT(*) FROM dcapi_missing_pairs WHERE customer = :customer AND {condition} "
            "GROUP BY severity_name", customer=scope.customer, **params):
        counts[name] = int(count)
    return counts


def past_sla_of(reader: Reader, scope: Scope, deadlines: Deadlines, column: str,
                keys: list[str] | None) -> dict[str, int]:
    """``column`` value (``resource_id`` or ``patch_id``) -> its missing pairs past their SLA, for
    ``keys`` (``None``: every one)."""
    if keys is not None and not keys:
        return {}
    condition, params = deadlines.condition()
    only = f" AND {column} IN :keys" if keys is not None else ""
    if keys is not None:
        params["keys"] = keys
    return {key: int(count) for key, count in reader.stream(
        f"SELECT {column}, COUNT(*) FROM dcapi_missing_pairs WHERE customer = :customer{only} AND {condition} "
        f"GROUP BY {column}", customer=scope.customer, **params)}


def oldest_breaches(reader: Reader, scope: Scope, deadlines: Deadlines) -> list[tuple[Any, str, str]]:
    """The ``scope.top`` oldest (missing since, resource id, patch id) past their SLA: the head of
    each severity's range of ``idx_dcapi_missing_age``, merged."""
    found: list[tuple[Any, str, str]] = []
    for name, limit in deadlines.values.items():
        found += [tuple(row) for row in reader.stream(  # type: ignore[misc]
            "SELECT missing_since, resource_id, patch_id FROM dcapi_missing_pairs WHERE customer = :customer "
            "AND severity_name = :name AND missing_since < :limit ORDER BY missing_since, resource_id, patch_id "
            "LIMIT :top", customer=scope.customer, name=name, limit=limit, top=scope.top)]
    return sorted(found)[:scope.top]
