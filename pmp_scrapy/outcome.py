"""How a run ended: the exit code, the one-line message and the log event (pure function).

Exit codes (contract): 0 done (batch done with no open gap, or target already met), 1 fatal,
2 partial (pages skipped, an interrupted run, or a complete sweep below the coverage target).
A fatal stop wins over the close reason (a final commit that fails while the spider closes
"finished" is exit 1), and a "finished" run that planned pages it neither stored nor recorded as
gaps is exit 1, never 0. The run record's own failure is applied by the checkpoint extension.
"""

from __future__ import annotations

from dataclasses import dataclass

from pmp_scrapy.coverage import format_pct, stall_explanation

#: close reasons that mean "fatal", exit code 1
FATAL_REASONS = frozenset({"pmp_auth_failed", "pmp_token_refresh_failed", "pmp_database_error",
                           "pmp_config_error"})
TARGET_MET_REASON = "pmp_target_met"
SKIPPED_REASON = "pmp_run_skipped"  # another run of the tenant holds its lock


@dataclass(frozen=True)
class Outcome:
    """The decision: ``event`` is the final log line's ``event_type``: ``target_met`` only for a
    successful run that meets the target, ``batch_complete`` for every other end (fatal ones too,
    so an alert on ``batch_complete`` with ``exit_code`` != 0 catches them)."""

    exit_code: int
    message: str
    event: str


@dataclass(frozen=True)
class RunFacts:
    """What the decision reads about a finished run."""

    close_reason: str
    abort_message: str | None
    gaps_open: int
    gaps_resolved: int
    pages_committed: int
    mappings_upserted: int
    snapshot_complete: bool
    coverage: int
    total_systems: int | None
    total_records: int | None
    target: float
    target_met: bool
    reconcile_refused: str | None = None  # why the end of the snapshot retired nothing
    #: why the run stopped itself, also when that came during the close (the final commit)
    abort_reason: str | None = None
    #: system-report pages the run planned (None while their count is unknown) and that reached
    #: the pipeline (stored or a gap): a "finished" run with fewer dropped some silently
    pages_planned: int | None = None
    pages_settled: int = 0


def decide_outcome(facts: RunFacts) -> Outcome:
    """Map a finished run to its exit code, message and event (see the module docstring)."""
    reason = facts.close_reason
    total = facts.total_systems
    if reason == TARGET_MET_REASON:
        return Outcome(0, f"coverage target already met ({facts.coverage} of {total} systems)", "target_met")
    if reason == SKIPPED_REASON:
        return Outcome(0, facts.abort_message or "another run of this tenant is in progress", "run_skipped")
    if reason in FATAL_REASONS:
        return Outcome(1, facts.abort_message or reason, "batch_complete")
    if facts.abort_reason in FATAL_REASONS:  # e.g. the final commit failed while the spider closed
        return Outcome(1, facts.abort_message or facts.abort_reason, "batch_complete")
    if reason != "finished":
        return Outcome(2, f"the run was interrupted ({reason}); the next run resumes from the checkpoint",
                       "batch_complete")
    missing = (facts.pages_planned or 0) - facts.pages_settled
    if missing > 0:  # the invariant: every planned page is committed or a gap before exit 0 (or 2)
        return Outcome(1, f"{missing} of {facts.pages_planned} planned page(s) were neither stored nor recorded as "
                          "a gap (see the log); the checkpoint stays before them, so the next run asks for them "
                          "again", "batch_complete")
    if facts.reconcile_refused:
        return Outcome(2, facts.reconcile_refused, "batch_complete")
    if facts.gaps_open:
        return Outcome(2, f"{facts.gaps_open} page(s) ended as gaps; the next run of this snapshot retries them "
                          "(see `scrapy status`)", "batch_complete")
    if facts.snapshot_complete and not facts.target_met and total:
        return Outcome(2, stall_explanation(facts.coverage, total, facts.total_records, facts.target),
                       "batch_complete")
    work = f"batch done: {facts.pages_committed} pages, {facts.mappings_upserted} mappings"
    if facts.gaps_resolved:
        work += f", {facts.gaps_resolved} gap(s) healed"
    message = f"{work}; coverage {facts.coverage} of {total or '?'} systems"
    if total:
        message += f" ({format_pct(facts.coverage, total)})"
    return Outcome(0, message, "target_met" if facts.target_met else "batch_complete")
