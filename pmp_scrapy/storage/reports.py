"""The summary answer of ``scrapy report`` (no selector): coverage, freshness, missing patches by
severity, the worst systems, the most missed patches and the SLA breaches of one customer. The
other forms live in :mod:`.report_subjects` (``--system``, ``--patch``, ``--bulletin``, ``--cve``)
and :mod:`.report_overview` (what the HTML report adds: the trend and the CVE overview); :mod:`.report_reader` opens
the database. Answers are plain, JSON-ready dicts; :mod:`pmp_scrapy.reporting` shows them.

The summary reads the roll-ups the batch commits keep (:mod:`.rollup`, through
:mod:`.report_tallies`): ~N systems' rows and covering index ranges, never every mapping.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any

from pmp_scrapy.reporting.codes import SEVERITIES
from pmp_scrapy.storage import report_tallies as tallies
from pmp_scrapy.storage.report_reader import (
    Reader,
    Scope,
    UnknownSubject,
    days_between,
    iso,
    number,
    utcnow,
)
from pmp_scrapy.storage.report_tallies import Deadlines, PatchTally, SystemTally

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


def _system_names(reader: Reader, customer: str, rids: list[str]) -> dict[str, str | None]:
    """Resource names of these systems (``dcapi_systems``); all of the customer's when many."""
    if len(rids) > 500:  # the driver's tuples: SQLAlchemy's rows cost ~0.3 s for 33,000 systems
        return dict(reader.stream("SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer",
                                  customer=customer))
    rows = reader.rows("SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer "
                       "AND resource_id IN :rids", customer=customer, rids=rids) if rids else []
    return {row["resource_id"]: row["resource_name"] for row in rows}


def _rank_key(severities: tuple[str, ...]) -> Any:
    def key(item: tuple[str, SystemTally]) -> tuple[Any, ...]:
        rid, tally = item
        by_severity = tally.by_severity
        return (*[-by_severity.get(name, 0) for name in severities], -tally.missing, rid)
    return key


def summary(reader: Reader, scope: Scope, *, every_system: bool = False) -> dict[str, Any]:
    """The summary answer: coverage, freshness, missing by severity, the worst systems, the most
    missed patches and the SLA breaches of the scope (the contract's keys). With
    ``every_system``, also ``systems_ranked``: every system missing something, worst first (the
    CSV form's rows; ``scope.limit`` of them when given)."""
    return tallied_summary(reader, scope, every_system=every_system)[0]


def tallied_summary(reader: Reader, scope: Scope, *,
                    every_system: bool = False) -> tuple[dict[str, Any], dict[str, PatchTally]]:
    """:func:`summary`, and the per-patch tallies it was made from (the HTML report's CVE
    overview counts from them). Reads the roll-ups (:mod:`.report_tallies`), never every mapping."""
    answer = head(reader, scope)
    now = utcnow()
    deadlines = Deadlines(reader, scope, now)
    systems = tallies.systems(reader, scope, deadlines)
    patches = tallies.patches(reader, scope)
    past_pairs = tallies.pairs_past_sla(reader, scope, deadlines)
    shown = scope.severities or _severities_seen(systems)
    answer.update(
        severity_filter=list(scope.severities) if scope.severities else None,
        systems_missing_any=len(systems),
        missing_pairs=sum(tally.missing for tally in systems.values()),
        systems_fully_patched=max(answer["systems"] - len(systems), 0),
        by_severity=_by_severity(shown, systems, patches),
        sla_days=dict(scope.sla_days),
        sla={"systems_past_sla": sum(1 for t in systems.values() if t.past_sla),
             "patches_past_sla": sum(1 for p in patches.values() if _past(p, deadlines)),
             "missing_past_sla": sum(past_pairs.values()),
             "by_severity": _sla_by_severity(shown, scope, systems, patches, deadlines, past_pairs)},
        cve_data="available" if reader.has_catalog(scope.customer) else "unavailable",
    )
    ranked = (sorted(systems.items(), key=_rank_key(shown)) if every_system
              else heapq.nsmallest(scope.top, systems.items(), key=_rank_key(shown)))
    listed = ranked if every_system else ranked[:scope.top]
    rids = [rid for rid, _ in listed]
    names = _system_names(reader, scope.customer, rids)
    past = tallies.past_sla_of(reader, scope, deadlines, "resource_id", None if every_system else rids)
    if every_system:
        answer["systems_ranked"] = [_system_entry(rid, names, tally, past, now) for rid, tally in ranked[:scope.limit]]
    answer["worst_systems"] = [_system_entry(rid, names, tally, past, now) for rid, tally in ranked[:scope.top]]
    answer["most_missed_patches"] = _most_missed(reader, scope, patches, deadlines)
    answer["sla_breaches"] = _breach_entries(reader, scope, tallies.oldest_breaches(reader, scope, deadlines), now)
    return answer, patches


def _past(patch: PatchTally, deadlines: Deadlines, severity: str | None = None) -> bool:
    """Whether the patch has a missing pair past its SLA (of ``severity`` only, when given)."""
    return any(deadlines.past(name, oldest) for name, (_, oldest) in patch.groups.items()
               if severity is None or name == severity)


def _severities_seen(systems: dict[str, SystemTally]) -> tuple[str, ...]:
    """Critical to Low always; Unrated and words no alias knows only when a row has them."""
    seen = {name for tally in systems.values() for name in tally.by_severity}
    return tuple(name for name in SEVERITIES if name != "Unrated" or name in seen) + tuple(sorted(seen - set(SEVERITIES)))


def _by_severity(shown: tuple[str, ...], systems: dict[str, SystemTally],
                 patches: dict[str, PatchTally]) -> dict[str, dict[str, int]]:
    return {name: {"systems_missing": sum(1 for t in systems.values() if t.by_severity.get(name)),
                   "patches_missing": sum(1 for p in patches.values() if name in p.groups)}
            for name in shown}


def _sla_by_severity(shown: tuple[str, ...], scope: Scope, systems: dict[str, SystemTally],
                     patches: dict[str, PatchTally], deadlines: Deadlines,
                     past_pairs: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per severity with an SLA: its days, and the systems, patches and (system, patch) pairs
    past it."""
    return {name: {"sla_days": scope.sla_days[name],
                   "systems_past_sla": sum(1 for t in systems.values() if name in t.past_sla),
                   "patches_past_sla": sum(1 for p in patches.values() if _past(p, deadlines, name)),
                   "missing_past_sla": past_pairs.get(name, 0)}
            for name in shown if name in scope.sla_days}


def _system_entry(rid: str, names: dict[str, str | None], tally: SystemTally, past: dict[str, int],
                  now: datetime) -> dict[str, Any]:
    by_severity = tally.by_severity
    entry: dict[str, Any] = {"resource_id": rid, "resource_name": names.get(rid)}
    for name, key in _MISSING_KEYS:
        entry[key] = by_severity.get(name, 0)
    entry["missing_count"], entry["past_sla"] = tally.missing, past.get(rid, 0)
    entry["oldest_missing_since"] = iso(tally.oldest)
    entry["oldest_missing_days"] = days_between(tally.oldest, now)
    return entry


_MISSING_KEYS = tuple((name, f"missing_{name.lower()}") for name in SEVERITIES)


def _most_missed(reader: Reader, scope: Scope, patches: dict[str, PatchTally],
                 deadlines: Deadlines) -> list[dict[str, Any]]:
    top = sorted(patches.items(), key=lambda item: (-item[1].systems, item[0]))[:scope.top]
    if not top:
        return []
    past = tallies.past_sla_of(reader, scope, deadlines, "patch_id", [pid for pid, _ in top])
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
                       "systems": row.get("systems"), "past_sla": past.get(pid, 0)})
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
