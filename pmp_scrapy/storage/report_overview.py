"""Everything the HTML report shows for one customer (:func:`overview`): the summary, the trend
over the kept snapshots and the CVE overview. Read-only, through a :class:`~.report_reader.Reader`.

The trend: per complete snapshot, the coverage its checkpoint recorded and the number of missing
(system, patch) pairs at its end. The latter is rebuilt from ``dcapi_mapping_events`` backwards
from the present: what is missing now, minus what each later snapshot made missing, plus what it
resolved (an event counts +1 when its new status is missing, -1 when its old one was). Without
recorded events (a database the history was never written to) only the coverage is known.
"""

from __future__ import annotations

from typing import Any

from pmp_scrapy.reporting.codes import MISSING
from pmp_scrapy.storage.report_reader import Reader, Scope, iso, number
from pmp_scrapy.storage.report_sql import status_is_sql
from pmp_scrapy.storage.report_subjects import cve
from pmp_scrapy.storage.report_tallies import PatchTally
from pmp_scrapy.storage.reports import tallied_summary

KEPT = 60  # snapshots shown at most


def trend(reader: Reader, customer: str, missing_now: int, *, kept: int = KEPT) -> dict[str, Any]:
    """``{"points": [...], "history": bool}``: per complete snapshot (oldest first) its id,
    completion time, systems and coverage, and, when the mapping history is recorded, the
    missing pairs at its end and what it made missing or resolved. ``missing_now`` is the count
    of missing pairs of the present systems (the summary's)."""
    snapshots = reader.rows(
        "SELECT s.snapshot_id, s.completed_at, s.managed_total, k.systems_extracted, k.coverage_pct "
        "FROM dcapi_snapshots s LEFT JOIN dcapi_extraction_checkpoints k ON k.snapshot_id = s.snapshot_id "
        "WHERE s.customer = :customer AND s.state = 'complete' ORDER BY s.snapshot_id DESC LIMIT :kept",
        customer=customer, kept=kept)[::-1]
    history = bool(reader.rows("SELECT 1 AS one FROM dcapi_mapping_events WHERE customer = :customer LIMIT 1",
                               customer=customer))
    changes: dict[int, tuple[int, int]] = {}
    if snapshots and history:
        became = status_is_sql(reader.dialect, "new_status", MISSING)
        was = status_is_sql(reader.dialect, "old_status", MISSING)
        for row in reader.rows(
                f"SELECT snapshot_id, SUM(CASE WHEN {became} THEN 1 ELSE 0 END) AS appeared, "
                f"SUM(CASE WHEN {was} THEN 1 ELSE 0 END) AS resolved FROM dcapi_mapping_events "
                "WHERE customer = :customer AND patch_id IS NOT NULL AND snapshot_id > :first GROUP BY snapshot_id",
                customer=customer, first=snapshots[0]["snapshot_id"]):
            changes[int(row["snapshot_id"])] = (int(row["appeared"] or 0), int(row["resolved"] or 0))
    points = []
    for snap in snapshots:
        sid = int(snap["snapshot_id"])
        later = sum(appeared - resolved for other, (appeared, resolved) in changes.items() if other > sid)
        appeared, resolved = changes.get(sid, (0, 0))
        points.append({"snapshot_id": sid, "completed_at": iso(snap["completed_at"]),
                       "systems": snap["systems_extracted"], "managed_total": snap["managed_total"],
                       "coverage_pct": number(snap["coverage_pct"]),
                       "missing_pairs": missing_now - later if history else None,
                       "newly_missing": appeared if history else None, "resolved": resolved if history else None})
    return {"points": points, "history": history}


class CveTally:
    """Systems missing each CVE of the catalog (``dcapi_patch_cves``): for a CVE one patch
    fixes, that patch's missing systems (the summary's patch tallies); for one that several fix,
    the distinct systems missing any of them (a system missing two is one system), counted over
    ``dcapi_missing_pairs``."""

    def __init__(self, reader: Reader, customer: str) -> None:
        self.cves_of: dict[str, list[str]] = {}
        self.fixes: dict[str, int] = {}
        for row in reader.rows("SELECT cve_id, patch_id FROM dcapi_patch_cves WHERE customer = :customer",
                               customer=customer):
            self.cves_of.setdefault(row["patch_id"], []).append(row["cve_id"])
            self.fixes[row["cve_id"]] = self.fixes.get(row["cve_id"], 0) + 1

    def missing(self, reader: Reader, scope: Scope, patches: dict[str, PatchTally]) -> dict[str, int]:
        """CVE id -> systems missing a patch that fixes it, in scope."""
        counts = {cve_id: tally.systems for pid, tally in patches.items()
                  for cve_id in self.cves_of.get(pid, ()) if self.fixes[cve_id] == 1}
        shared = {pid for pid, cve_ids in self.cves_of.items() if any(self.fixes[c] > 1 for c in cve_ids)}
        if shared:
            # The pairs of those patches (a covering range of idx_dcapi_missing_patch each), united
            # per CVE here: SQLite plans the join with a COUNT(DISTINCT) as a scan of every pair.
            where, params = reader.severity_filter(scope)
            systems: dict[str, set[str]] = {}
            for pid, rid in reader.stream("SELECT patch_id, resource_id FROM dcapi_missing_pairs WHERE customer = "
                                          f":customer AND patch_id IN :ids{where}", customer=scope.customer,
                                          ids=sorted(shared & set(patches)), **params):
                for cve_id in self.cves_of[pid]:
                    if self.fixes[cve_id] > 1:
                        systems.setdefault(cve_id, set()).add(rid)
            counts.update((cve_id, len(found)) for cve_id, found in systems.items())
        return counts


def cve_overview(reader: Reader, scope: Scope, tally: CveTally | None,
                 patches: dict[str, PatchTally]) -> dict[str, Any]:
    """The catalog's CVEs for the scope: how many, how many affect a present system, how many a
    system still misses a fix for, and the ``scope.top`` CVEs missing on most systems (each the
    ``--cve`` answer). ``{"cve_data": "unavailable"}`` without a catalog (``tally`` None)."""
    if tally is None:
        return {"cve_data": "unavailable"}
    where, params = reader.severity_filter(scope)
    missing = tally.missing(reader, scope, patches)
    [affecting] = reader.rows(
        "SELECT COUNT(DISTINCT c.cve_id) AS n FROM dcapi_patch_cves c WHERE c.customer = :customer AND EXISTS "
        f"(SELECT 1 FROM dcapi_v_mappings v WHERE v.customer = c.customer AND v.patch_id = c.patch_id{where})",
        "dcapi_v_mappings", customer=scope.customer, **params)
    worst = sorted(missing, key=lambda cve_id: (-missing[cve_id], cve_id))[:scope.top]
    top_scope = Scope(customer=scope.customer, severities=scope.severities, limit=0, sla_days=scope.sla_days)
    return {"cve_data": "available", "cves": len(tally.fixes), "cves_affecting": int(affecting["n"]),
            "cves_missing": len(missing), "cves_covered": int(affecting["n"]) - len(missing),
            "worst": [cve(reader, top_scope, cve_id) for cve_id in worst]}


def overview(reader: Reader, scope: Scope) -> dict[str, Any]:
    """``{"summary", "trend", "cves"}`` of the scope's customer: the HTML report's section. The
    summary's patch tallies serve the CVE overview too."""
    tally = CveTally(reader, scope.customer) if reader.has_catalog(scope.customer) else None
    answer, patches = tallied_summary(reader, scope)
    return {"summary": answer, "trend": trend(reader, scope.customer, answer["missing_pairs"]),
            "cves": cve_overview(reader, scope, tally, patches)}
