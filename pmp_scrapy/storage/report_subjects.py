"""The answers of ``scrapy report --system``, ``--patch``, ``--bulletin`` and ``--cve``: what one
system is missing, which systems have one patch, and how covered the systems are for one
bulletin or CVE. Each reads the ``dcapi_v_*`` views through a :class:`~.report_reader.Reader`,
raises :class:`~.report_reader.UnknownSubject` (one line) for what the database does not know,
and returns the contract's keys ("Compliance answers") plus a few more.

A bulletin's patches are those whose mapping rows carry it; a CVE's, those the patch catalog
lists it for. A system is *affected* when it has a row for any of them, *missing* when any of
those rows is missing, *covered* when affected and not missing.
"""

from __future__ import annotations

import re
from typing import Any

from pmp_scrapy.reporting.codes import severity_name
from pmp_scrapy.storage.report_reader import (
    Reader,
    Scope,
    UnknownSubject,
    days_between,
    epoch_ms_iso,
    iso,
    number,
    pct,
    utcnow,
)
from pmp_scrapy.storage.report_sql import equals_folded_sql

_KB = re.compile(r"(?i)kb?(\d{5,8})")
_CANDIDATES = 5  # named in the message when a name matches several


def _one_decimal(value: Any) -> float | None:
    days = number(value)
    return None if days is None else round(days, 1)


def _cves_of(reader: Reader, customer: str, patch_ids: list[str]) -> dict[str, list[str]]:
    """``patch_id -> [CVE ids]`` from the catalog, for these patches."""
    found: dict[str, list[str]] = {pid: [] for pid in patch_ids}
    if patch_ids:
        for row in reader.rows("SELECT patch_id, cve_id FROM dcapi_patch_cves WHERE customer = :customer "
                               "AND patch_id IN :ids ORDER BY cve_id", customer=customer, ids=patch_ids):
            found[row["patch_id"]].append(row["cve_id"])
    return found


def _ambiguous(what: str, key: str, candidates: list[tuple[str, str | None]], give: str) -> UnknownSubject:
    named = ", ".join(f"{ident} ({name})" if name else ident for ident, name in candidates[:_CANDIDATES])
    more = f" and {len(candidates) - _CANDIDATES} more" if len(candidates) > _CANDIDATES else ""
    return UnknownSubject(f"{len(candidates)} {what} match {key!r}: {named}{more}; give the {give}")


# --- --system --------------------------------------------------------------------------------------------

def find_system(reader: Reader, scope: Scope, key: str) -> tuple[str, str | None]:
    """The present system whose resource id is ``key``, else whose name is (exact first, then
    ignoring case). Reads ``dcapi_systems``."""
    key = key.strip()
    exact = reader.rows("SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer "
                        "AND retired_at IS NULL AND (resource_id = :key OR resource_name = :key) "
                        "ORDER BY resource_id", customer=scope.customer, key=key)
    by_id = [row for row in exact if row["resource_id"] == key]
    matches = by_id or exact
    if not matches:
        folded = key.casefold()
        matches = [row for row in reader.rows(
            "SELECT resource_id, resource_name FROM dcapi_systems WHERE customer = :customer AND retired_at IS NULL "
            "ORDER BY resource_id", customer=scope.customer) if (row["resource_name"] or "").casefold() == folded]
    if len(matches) > 1:
        raise _ambiguous("systems", key, [(r["resource_id"], r["resource_name"]) for r in matches], "resource id")
    if not matches:
        raise UnknownSubject(f"no system {key!r} (resource id or name) for {scope.customer_label()}"
                             f"{_elsewhere(reader, scope, key)}")
    return matches[0]["resource_id"], matches[0]["resource_name"]


def _elsewhere(reader: Reader, scope: Scope, key: str) -> str:
    """Why a system is not found, when the database knows more: retired, or another customer's."""
    rows = reader.rows("SELECT customer, retired_at FROM dcapi_systems WHERE resource_id = :key OR resource_name = :key "
                       "ORDER BY retired_at", key=key)
    for row in rows:
        if row["customer"] == scope.customer and row["retired_at"] is not None:
            return f" (retired {iso(row['retired_at'])}: PMP no longer reports it)"
    others = sorted({row["customer"] for row in rows if row["customer"] != scope.customer})
    if others:
        return f" (it is a system of {', '.join(repr(c) if c else 'the default customer' for c in others)}: use --customer)"
    return ""


def system(reader: Reader, scope: Scope, key: str) -> dict[str, Any]:
    """What system ``key`` (resource id or name) is missing, most severe first, oldest first."""
    rid, name = find_system(reader, scope, key)
    where, params = reader.severity_filter(scope)
    [counts] = reader.rows(
        "SELECT COUNT(*) AS patches, COALESCE(SUM(is_installed), 0) AS installed, COALESCE(SUM(is_missing), 0) "
        f"AS missing FROM dcapi_v_mappings WHERE customer = :customer AND resource_id = :rid{where}",
        "dcapi_v_mappings", customer=scope.customer, rid=rid, **params)
    rows = reader.rows(
        "SELECT patch_id, patchname, severity_name, bulletinid, vendor_name, missing_since, days_missing "
        f"FROM dcapi_v_missing WHERE customer = :customer AND resource_id = :rid{where} "
        "ORDER BY severity_rank DESC, missing_since, patch_id", "dcapi_v_missing",
        customer=scope.customer, rid=rid, **params)
    shown = rows[:scope.limit]
    cves = _cves_of(reader, scope.customer, [row["patch_id"] for row in shown])
    missing = []
    for row in rows:
        days, sla = _one_decimal(row["days_missing"]), scope.sla_days.get(row["severity_name"])
        missing.append({"patch_id": row["patch_id"], "patchname": row["patchname"],
                        "severity": row["severity_name"], "bulletinid": row["bulletinid"],
                        "vendor_name": row["vendor_name"], "cves": cves.get(row["patch_id"], []),
                        "missing_since": iso(row["missing_since"]), "days_missing": days, "sla_days": sla,
                        "past_sla": sla is not None and days is not None and days > sla})
    installed, missing_count = int(counts["installed"]), int(counts["missing"])
    return {"customer": scope.customer, "resource_id": rid, "resource_name": name,
            "severity_filter": list(scope.severities) if scope.severities else None,
            "patch_count": int(counts["patches"]), "installed_count": installed, "missing_count": missing_count,
            "other_count": int(counts["patches"]) - installed - missing_count,
            "past_sla_count": sum(1 for entry in missing if entry["past_sla"]),
            "missing": missing[:scope.limit]}


# --- --patch ---------------------------------------------------------------------------------------------

def find_patch(reader: Reader, scope: Scope, key: str) -> str:
    """The patch whose id is ``key``, else whose KB number (``KB5034441`` or ``5034441``) or name
    (ignoring case) it is: in the patch catalog first, then in the mappings (a pass over them).
    Raises :class:`UnknownSubject` when none or several match."""
    key = key.strip()
    known = reader.rows(
        "SELECT patch_id FROM dcapi_v_mappings WHERE customer = :customer AND patch_id = :key "
        "UNION SELECT patch_id FROM dcapi_patch_catalog WHERE customer = :customer AND patch_id = :key",
        "dcapi_v_mappings", customer=scope.customer, key=key)
    if known:
        return key
    kb = _KB.fullmatch(key)
    like = f"%kb{kb.group(1)}%" if kb else key

    def matching(rows: list[dict[str, Any]]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for row in rows:
            name = row["name"] or ""
            hit = (re.search(rf"(?i)kb{kb.group(1)}(?!\d)", name) or row.get("kb") in (kb.group(1), f"KB{kb.group(1)}")
                   ) if kb else name.casefold() == key.casefold()
            if hit:
                found.setdefault(row["patch_id"], name)
        return found

    name_like = "patch_name ILIKE :like" if reader.dialect == "postgresql" else "patch_name LIKE :like"
    found = matching(reader.rows(
        f"SELECT patch_id, patch_name AS name, kb_number AS kb FROM dcapi_patch_catalog WHERE customer = :customer "
        f"AND ({name_like} OR kb_number IN :kbs)", customer=scope.customer, like=like,
        kbs=[kb.group(1), f"KB{kb.group(1)}"] if kb else [key]))
    if not found:
        found = matching(reader.rows(
            f"SELECT DISTINCT patch_id, patchname AS name FROM dcapi_v_mappings WHERE customer = :customer "
            f"AND {name_like.replace('patch_name', 'patchname')}", "dcapi_v_mappings",
            customer=scope.customer, like=like))
    if len(found) > 1:
        raise _ambiguous("patches", key, sorted(found.items()), "patch id")
    if not found:
        raise UnknownSubject(f"no patch {key!r} (patch id, KB number or name) for {scope.customer_label()}")
    return next(iter(found))


def patch(reader: Reader, scope: Scope, key: str) -> dict[str, Any]:
    """Which systems have patch ``key`` installed, and which miss it. ``--severity`` does not
    apply: a patch has one."""
    pid = find_patch(reader, scope, key)
    now = utcnow()
    rows = reader.rows(
        "SELECT resource_id, resource_name, patchname, severity_name, bulletinid, vendor_name, status_name, "
        "is_missing, is_installed, installed_time, missing_since FROM dcapi_v_mappings "
        "WHERE customer = :customer AND patch_id = :pid ORDER BY resource_name, resource_id",
        "dcapi_v_mappings", customer=scope.customer, pid=pid)
    catalog = reader.rows("SELECT patch_name, severity, bulletinid, vendor_name, kb_number, reboot_required "
                          "FROM dcapi_patch_catalog WHERE customer = :customer AND patch_id = :pid",
                          customer=scope.customer, pid=pid)
    first: dict[str, Any] = rows[0] if rows else {}
    listed: dict[str, dict[str, Any]] = {}
    if catalog:
        listed = catalog[0]
    installed = [{"resource_id": r["resource_id"], "resource_name": r["resource_name"],
                  "installed_at": epoch_ms_iso(r["installed_time"])} for r in rows if r["is_installed"]]
    missing = [{"resource_id": r["resource_id"], "resource_name": r["resource_name"],
                "missing_since": iso(r["missing_since"]), "days_missing": days_between(r["missing_since"], now)}
               for r in rows if r["is_missing"]]
    other = [{"resource_id": r["resource_id"], "resource_name": r["resource_name"], "status": r["status_name"]}
             for r in rows if not r["is_missing"] and not r["is_installed"]]
    return {"customer": scope.customer, "patch_id": pid,
            "patchname": first.get("patchname") or listed.get("patch_name"),
            "severity": first.get("severity_name") or (severity_name(listed["severity"]) if listed else None),
            "bulletinid": first.get("bulletinid") or listed.get("bulletinid"),
            "vendor_name": first.get("vendor_name") or listed.get("vendor_name"),
            "kb_number": listed.get("kb_number"), "cves": _cves_of(reader, scope.customer, [pid])[pid],
            "systems": len(rows), "systems_installed": len(installed), "systems_missing": len(missing),
            "systems_other": len(other), "coverage_pct": pct(len(rows) - len(missing), len(rows)),
            "installed": installed[:scope.limit], "missing": missing[:scope.limit], "other": other[:scope.limit]}


# --- --bulletin and --cve ----------------------------------------------------------------------------------

def _reach(rows: list[dict[str, Any]], patches: list[str], scope: Scope) -> dict[str, Any]:
    """Systems affected, covered and missing over mapping rows ``rows`` (one per system and
    patch, with ``resource_id``, ``resource_name``, ``patch_id``, ``is_missing``)."""
    names: dict[str, str | None] = {}
    missed: dict[str, list[str]] = {}
    for row in rows:
        names[row["resource_id"]] = row["resource_name"]
        if row["is_missing"]:
            missed.setdefault(row["resource_id"], []).append(row["patch_id"])

    def order(rid: str) -> tuple[str, str]:
        return (names[rid] or "", rid)

    covered = sorted((rid for rid in names if rid not in missed), key=order)
    missing = sorted(missed, key=order)
    return {"patches": patches, "systems_affected": len(names), "systems_covered": len(covered),
            "systems_missing": len(missing), "coverage_pct": pct(len(covered), len(names)),
            "missing": [{"resource_id": rid, "resource_name": names[rid], "patches": sorted(missed[rid])}
                        for rid in missing[:scope.limit]],
            "covered": [{"resource_id": rid, "resource_name": names[rid]} for rid in covered[:scope.limit]]}


def bulletin(reader: Reader, scope: Scope, key: str) -> dict[str, Any]:
    """Coverage of the present systems for bulletin ``key`` (ignoring case): the patches whose
    mapping rows carry it (or, when no system has one, the catalog's). Reads
    ``dcapi_bulletin_patches``, ``dcapi_v_mappings`` and ``dcapi_patch_catalog``."""
    key = key.strip()
    where, params = reader.severity_filter(scope)
    # The bulletin's patches from dcapi_bulletin_patches (kept with the roll-ups, folded by the
    # same lower()), then their rows by idx_psm_patch: not a pass over every mapping.
    rows = reader.rows(
        "SELECT resource_id, resource_name, patch_id, bulletinid, is_missing FROM dcapi_v_mappings "
        "WHERE customer = :customer AND patch_id IN (SELECT patch_id FROM dcapi_bulletin_patches "
        f"WHERE bulletin_key = lower(:key)) AND {equals_folded_sql(reader.dialect, 'bulletinid', ':key')}{where}",
        "dcapi_v_mappings", customer=scope.customer, key=key, **params)
    patches = sorted({row["patch_id"] for row in rows})
    spelled = rows[0]["bulletinid"] if rows else key
    if not rows:
        catalog = reader.rows(
            "SELECT patch_id, bulletinid FROM dcapi_patch_catalog WHERE customer = :customer AND "
            f"{equals_folded_sql(reader.dialect, 'bulletinid', ':key')} ORDER BY patch_id",
            customer=scope.customer, key=key)
        if not catalog:
            raise UnknownSubject(f"no bulletin {key!r} in the mappings or the patch catalog of {scope.customer_label()}")
        patches, spelled = [row["patch_id"] for row in catalog], catalog[0]["bulletinid"]
    return {"customer": scope.customer, "bulletin": spelled,
            "severity_filter": list(scope.severities) if scope.severities else None,
            **_reach(rows, patches, scope)}


def cve(reader: Reader, scope: Scope, key: str) -> dict[str, Any]:
    """Coverage of the present systems for CVE ``key``: the patches the catalog lists it for.
    ``"cve_data": "unavailable"`` (and no counts) when no catalog was swept for the customer."""
    key = key.strip().upper()
    if not reader.has_catalog(scope.customer):
        return {"customer": scope.customer, "cve": key, "cve_data": "unavailable", "patches": [],
                "systems_affected": None, "systems_covered": None, "systems_missing": None,
                "coverage_pct": None, "missing": [], "covered": []}
    patches = [row["patch_id"] for row in reader.rows(
        "SELECT DISTINCT patch_id FROM dcapi_patch_cves WHERE customer = :customer AND "
        f"{equals_folded_sql(reader.dialect, 'cve_id', ':key')} ORDER BY patch_id", customer=scope.customer, key=key)]
    if not patches:
        raise UnknownSubject(f"no CVE {key!r} in the patch catalog of {scope.customer_label()}")
    where, params = reader.severity_filter(scope)
    rows = reader.rows(
        "SELECT resource_id, resource_name, patch_id, is_missing FROM dcapi_v_mappings "
        f"WHERE customer = :customer AND patch_id IN :ids{where}", "dcapi_v_mappings",
        customer=scope.customer, ids=patches, **params)
    return {"customer": scope.customer, "cve": key, "cve_data": "available",
            "severity_filter": list(scope.severities) if scope.severities else None,
            **_reach(rows, patches, scope)}
