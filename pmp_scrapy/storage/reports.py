"""The summary answer of ``scrapy report`` (no selector): coverage, freshness, missing patches by
severity, the worst systems, the most missed patches and the SLA breaches of one customer. The
other forms live in :mod:`.report_subjects` (``--system``, ``--patch``, ``--bulletin``, ``--cve``)
and :mod:`.report_overview` (what the HTML report adds: the trend and the CVE overview); :mod:`.report_reader` opens
the database. Answers are plain, JSON-ready dicts; :mod:`pmp_scrapy.reporting` shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pmp_scrapy.reporting.codes import SEVERITIES, severity_name
from pmp_scrapy.storage.report_reader import (
    Reader,
    Scope,
    UnknownSubject,
    days_between,
    iso,
    number,
    utcnow,
)

# --- the summary -------------------------------------------------------------------------------------

def head(reader: Reader, scope: Scope) -> dict[str, Any]:
    """Coverage and freshness of the scope's customer (``dcapi_v_customers``); raises
    :class:`UnknownSubject` for a named customer the database does not know."""
    found = reader.rows("SELECT * FROM dcapi_v_customers WHERE customer = :customer", "dcapi_v_customers",
                        customer=scope.customer)
    customers = reader.customers()
    if not found and scope.customer:
        known = ", ".join(name or "(default)" for name in customers) or "none"
        raise UnknownSubject(f"no customer {scope.customer!r} in the database (customers: {known})")
    row = found[0] if found else {}
    return {
        "customer": scope.customer,
        "customers": customers,
        "systems": int(row.get("systems") or 0),
        "managed_total": row.get("managed_total"),
        "coverage_pct": number(row.get("coverage_pct")),
        "data_as_of": iso(row.get("data_as_of")),
        "latest_snapshot": ({"snapshot_id": row["latest_snapshot_id"], "state": row["latest_snapshot_state"]}
                            if row.get("latest_snapshot_id") is not None else None),
    }


def _severity_names() -> Any:
    """``severity_name`` with a memo: a few distinct values over 300,000 rows."""
    memo: dict[Any, str] = {}

    def named(raw: Any) -> str:
        name = memo.get(raw)
        if name is None:
            name = memo[raw] = severity_name(raw)
        return name
    return named


def _system_names(reader: Reader, customer: str, rids: list[str]) -> dict[str, str | None]:
    """Resource names of these systems (``dcapi_systems``); all of the customer's when many."""
    if len(rids) > 500:
        rows = reader.rows("SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer",
                           customer=customer)
    else:
        rows = reader.rows("SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer "
                           "AND resource_id IN :rids", customer=customer, rids=rids) if rids else []
    return {row["resource_id"]: row["resource_name"] for row in rows}


@dataclass
class _SystemTally:
    by_severity: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    past_sla: dict[str, int] = field(default_factory=dict)
    oldest: Any = None  # the earliest "missing since", as the driver returned it


@dataclass
class _PatchTally:
    severity: str
    systems: int = 0
    past_sla: int = 0


def _rank_key(severities: tuple[str, ...]) -> Any:
    def key(item: tuple[str, _SystemTally]) -> tuple[Any, ...]:
        rid, tally = item
        return (*(-tally.by_severity.get(name, 0) for name in severities), -tally.missing, rid)
    return key


def summary(reader: Reader, scope: Scope, *, every_system: bool = False,
            observe: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """The summary answer: coverage, freshness, missing by severity, the worst systems, the most
    missed patches and the SLA breaches of the scope (the contract's keys). With
    ``every_system``, also ``systems_ranked``: every system missing something, worst first (the
    CSV form's rows; ``scope.limit`` of them when given). ``observe(resource_id, patch_id)`` is
    called for every missing pair of the pass, for a caller tallying more from the same rows.

    One pass over the customer's missing rows (``dcapi_v_missing``), tallied here: on SQLite each
    of the four aggregates would be a pass of its own over 1.6 million mappings."""
    answer = head(reader, scope)
    now = utcnow()
    deadlines = _Deadlines(scope, now)
    where, params = reader.severity_filter(scope)
    systems: dict[str, _SystemTally] = {}
    patches: dict[str, _PatchTally] = {}
    oldest: list[tuple[Any, str, str]] = []  # the oldest breaches, kept to ~2x the list's length
    cut: Any = None
    top = scope.top
    named = _severity_names()
    # The raw severity, named here through the same vocabulary as the views' severity_name (a
    # CASE per row is a tenth of SQLite's time on this pass); names come later, for the systems
    # shown, instead of one string object per row.
    for rid, pid, raw, since in reader.stream(
            "SELECT resource_id, patch_id, severity, missing_since FROM dcapi_v_missing "
            f"WHERE customer = :customer{where}", "dcapi_v_missing", customer=scope.customer, **params):
        severity = named(raw)
        if observe is not None:
            observe(rid, pid)
        tally = systems.get(rid)
        if tally is None:
            tally = systems[rid] = _SystemTally()
        counts = tally.by_severity
        counts[severity] = counts.get(severity, 0) + 1
        tally.missing += 1
        patch = patches.get(pid)
        if patch is None:
            patch = patches[pid] = _PatchTally(severity)
        patch.systems += 1
        if since is None:
            continue
        if tally.oldest is None or since < tally.oldest:
            tally.oldest = since
        limit = deadlines.of(severity, since)
        if limit is not None and since < limit:
            tally.past_sla[severity] = tally.past_sla.get(severity, 0) + 1
            patch.past_sla += 1
            if top and (cut is None or since < cut):
                oldest.append((since, rid, pid))
                if len(oldest) >= 2 * top:
                    oldest.sort()
                    del oldest[top:]
                    cut = oldest[-1][0]
    oldest.sort()
    shown = scope.severities or _severities_seen(systems)
    answer.update(
        severity_filter=list(scope.severities) if scope.severities else None,
        systems_missing_any=len(systems),
        missing_pairs=sum(tally.missing for tally in systems.values()),
        systems_fully_patched=max(answer["systems"] - len(systems), 0),
        by_severity=_by_severity(shown, systems, patches),
        sla_days=dict(scope.sla_days),
        sla={"systems_past_sla": sum(1 for t in systems.values() if t.past_sla),
             "patches_past_sla": sum(1 for p in patches.values() if p.past_sla),
             "missing_past_sla": sum(p.past_sla for p in patches.values()),
             "by_severity": _sla_by_severity(shown, scope, systems, patches)},
        cve_data="available" if reader.has_catalog(scope.customer) else "unavailable",
    )
    ranked = sorted(systems.items(), key=_rank_key(shown))
    names = _system_names(reader, scope.customer, [rid for rid, _ in (ranked if every_system else ranked[:top])])
    if every_system:
        answer["systems_ranked"] = [_system_entry(rid, names, tally, now) for rid, tally in ranked[:scope.limit]]
    answer["worst_systems"] = [_system_entry(rid, names, tally, now) for rid, tally in ranked[:top]]
    answer["most_missed_patches"] = _most_missed(reader, scope, patches)
    answer["sla_breaches"] = _breach_entries(reader, scope, oldest[:top], now)
    return answer


class _Deadlines:
    """The moment before which a missing patch of each severity is past its SLA, in the type the
    driver returns timestamps in (PostgreSQL: datetime; SQLite: text, which orders like the
    time: both writers use ``YYYY-MM-DD HH:MM:SS[.ffffff]``), so 300,000 rows need no parsing."""

    def __init__(self, scope: Scope, now: datetime) -> None:
        self.moments = {name: now - timedelta(days=days) for name, days in scope.sla_days.items()}
        self.texts = {name: moment.isoformat(sep=" ") for name, moment in self.moments.items()}

    def of(self, severity: str, since: Any) -> Any:
        return (self.texts if isinstance(since, str) else self.moments).get(severity)


def _severities_seen(systems: dict[str, _SystemTally]) -> tuple[str, ...]:
    """Critical to Low always; Unrated and words no alias knows only when a row has them."""
    seen = {name for tally in systems.values() for name in tally.by_severity}
    return tuple(name for name in SEVERITIES if name != "Unrated" or name in seen) + tuple(sorted(seen - set(SEVERITIES)))


def _by_severity(shown: tuple[str, ...], systems: dict[str, _SystemTally],
                 patches: dict[str, _PatchTally]) -> dict[str, dict[str, int]]:
    return {name: {"systems_missing": sum(1 for t in systems.values() if t.by_severity.get(name)),
                   "patches_missing": sum(1 for p in patches.values() if p.severity == name)}
            for name in shown}


def _sla_by_severity(shown: tuple[str, ...], scope: Scope, systems: dict[str, _SystemTally],
                     patches: dict[str, _PatchTally]) -> dict[str, dict[str, int]]:
    """Per severity with an SLA: its days, and the systems, patches and (system, patch) pairs
    past it."""
    return {name: {"sla_days": scope.sla_days[name],
                   "systems_past_sla": sum(1 for t in systems.values() if t.past_sla.get(name)),
                   "patches_past_sla": sum(1 for p in patches.values() if p.severity == name and p.past_sla),
                   "missing_past_sla": sum(p.past_sla for p in patches.values() if p.severity == name)}
            for name in shown if name in scope.sla_days}


def _system_entry(rid: str, names: dict[str, str | None], tally: _SystemTally, now: datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource_id": rid, "resource_name": names.get(rid)}
    entry.update({f"missing_{name.lower()}": tally.by_severity.get(name, 0) for name in SEVERITIES})
    entry.update(missing_count=tally.missing, past_sla=sum(tally.past_sla.values()),
                 oldest_missing_since=iso(tally.oldest),
                 oldest_missing_days=days_between(tally.oldest, now))
    return entry


def _most_missed(reader: Reader, scope: Scope, patches: dict[str, _PatchTally]) -> list[dict[str, Any]]:
    top = sorted(patches.items(), key=lambda item: (-item[1].systems, item[0]))[:scope.top]
    if not top:
        return []
    details = {row["patch_id"]: row for row in reader.rows(
        "SELECT patch_id, patchname, severity_name, bulletinid, vendor_name, systems, systems_installed, "
        "systems_missing FROM dcapi_v_patch_compliance WHERE customer = :customer AND patch_id IN :ids",
        "dcapi_v_patch_compliance", customer=scope.customer, ids=[pid for pid, _ in top])}
    result = []
    for pid, tally in top:
        row = details.get(pid, {})
        result.append({"patch_id": pid, "patchname": row.get("patchname"), "severity": tally.severity,
                       "bulletinid": row.get("bulletinid"), "vendor_name": row.get("vendor_name"),
                       "systems_missing": tally.systems, "systems_installed": row.get("systems_installed"),
                       "systems": row.get("systems"), "past_sla": tally.past_sla})
    return result


def _breach_entries(reader: Reader, scope: Scope, oldest: list[tuple[Any, str, str]],
                    now: datetime) -> list[dict[str, Any]]:
    if not oldest:
        return []
    rids = sorted({rid for _, rid, _ in oldest})
    pids = sorted({pid for _, _, pid in oldest})
    found = {(row["resource_id"], row["patch_id"]): row for row in reader.rows(
        "SELECT resource_id, resource_name, patch_id, patchname, severity_name, bulletinid, missing_since "
        "FROM dcapi_v_missing WHERE customer = :customer AND resource_id IN :rids AND patch_id IN :pids",
        "dcapi_v_missing", customer=scope.customer, rids=rids, pids=pids)}
    entries = []
    for _, rid, pid in oldest:
        row = found[(rid, pid)]
        days = days_between(row["missing_since"], now)
        sla = scope.sla_days[row["severity_name"]]
        entries.append({"resource_id": rid, "resource_name": row["resource_name"], "patch_id": pid,
                        "patchname": row["patchname"], "severity": row["severity_name"],
                        "bulletinid": row["bulletinid"], "missing_since": iso(row["missing_since"]),
                        "days_missing": days, "sla_days": sla,
                        "days_past_sla": None if days is None else round(days - sla, 1)})
    return entries
