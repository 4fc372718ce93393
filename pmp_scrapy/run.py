"""The one typed record of a run, shared by every component.

:class:`RunRecord` holds the plan, the denominator's sources, pages planned and settled, what
was committed, coverage and the outcome. Its owner (the checkpoint extension, a :class:`RunOwner`)
creates it at ``spider_opened``; every other component reaches it through :func:`get_run`, as
Scrapy's own components reach each other (``crawler.get_extension``). Stats stay a report:
components write ``pmp/...`` stats for people and never read them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pmp_scrapy import coverage as cov

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from pmp_scrapy.outcome import Outcome
    from pmp_scrapy.plan import RunPlan, RunState


@dataclass
class RunRecord:
    """Everything components share about the run in progress (see the module docstring)."""

    customer: str | None
    target: float
    configured_total: int | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    state: RunState | None = None
    plan: RunPlan | None = None
    coverage_at_start: int | None = None
    previous_coverage: int | None = None
    coverage: int = 0
    managed_total: int | None = None  # this run's inventory answer
    total_pages: int | None = None  # the server's latest page count
    total_records: int | None = None  # the server's latest totalRecords
    pages_settled: int = 0  # pages that reached the pipeline this run (data or gap)
    gaps_settled: int = 0
    pages_committed: int = 0
    mappings_upserted: int = 0
    gaps_opened: int = 0
    gaps_resolved: int = 0
    checkpoint_page: int | None = None
    systems_extracted: int = 0
    patches_extracted: int = 0
    snapshot_complete: bool = False
    abort_reason: str | None = None
    abort_message: str | None = None
    reconciliation: Any = None  # storage.batch.Reconciliation, when the snapshot was reconciled
    #: pages a commit asked to read again (a shift totalRecords did not show); the spider takes them
    pages_to_reread: set[int] = field(default_factory=set)
    #: takes a place in Zoho's token budget shared by every run of the client (0: mint now, else
    #: the seconds to wait); set by the owner when a database shares the budget
    claim_token_mint: Callable[[], float] | None = None
    outcome: Outcome | None = None

    # --- coverage ----------------------------------------------------------------------------------
    def denominator(self) -> int | None:
        """Coverage's denominator, by the contract's one fallback chain."""
        known = self.plan.known_managed_total if self.plan else (self.state.managed_total if self.state else None)
        return cov.denominator(self.configured_total, self.managed_total, known, self.total_records)

    def coverage_pct(self) -> float | None:
        """Coverage as a percentage of the denominator."""
        return cov.coverage_pct(self.coverage, self.denominator())

    def target_met(self) -> bool:
        """Whether the coverage target is met now."""
        return cov.target_met(self.coverage, self.denominator(), self.target)

    # --- progress ----------------------------------------------------------------------------------
    @property
    def snapshot_id(self) -> int | None:
        """The snapshot this run works on (or the latest one, before a plan exists)."""
        if self.plan is not None:
            return self.plan.snapshot_id
        return self.state.snapshot_id if self.state is not None else None

    def planned_pages(self) -> int | None:
        """Pages this run will settle, or ``None`` while the page count is unknown."""
        if self.plan is None:
            return None
        return self.plan.planned_pages(self.total_pages or self.plan.known_total_pages)

    def progress_pct(self) -> float | None:
        """Share of this run's planned pages settled so far."""
        planned = self.planned_pages()
        if not planned:
            return None
        return round(min(100.0, 100.0 * self.pages_settled / planned), 1)

    def sweep_pct(self) -> float | None:
        """Share of the whole snapshot's pages behind this run's progress (``progress_pct`` is of
        this run's planned pages only)."""
        plan, total = self.plan, self.total_pages or (self.plan.known_total_pages if self.plan else None)
        if plan is None or not total:
            return None
        done = (plan.first_page - 1 if plan.first_page else total) + self.pages_settled - len(plan.retry_pages)
        return round(min(100.0, max(0.0, 100.0 * done / total)), 1)

    def eta_minutes(self) -> float | None:
        """Minutes until this run's planned pages are settled, at the pace so far."""
        planned = self.planned_pages()
        if planned is None or not self.pages_settled:
            return None
        elapsed = time.monotonic() - self.started_monotonic
        return round(elapsed / self.pages_settled * max(planned - self.pages_settled, 0) / 60.0, 1)

    # --- the end -------------------------------------------------------------------------------------
    def abort(self, reason: str, message: str) -> bool:
        """Record why the run stops early; ``False`` if it was already stopping."""
        if self.abort_reason is not None:
            return False
        self.abort_reason, self.abort_message = reason, message
        return True

    def summary(self) -> dict[str, Any]:
        """The JSON-ready run summary (the hook's stdin, Slack's last message, ``dcapi_runs``)."""
        total = self.denominator()
        result: dict[str, Any] = {
            "customer": self.customer,
            "snapshot_id": self.snapshot_id,
            "pages_committed": self.pages_committed,
            "mappings_upserted": self.mappings_upserted,
            "gaps_opened": self.gaps_opened,
            "gaps_resolved": self.gaps_resolved,
            "checkpoint_page": self.checkpoint_page,
            "total_pages": self.total_pages or (self.plan.known_total_pages if self.plan else None),
            "coverage": self.coverage,
            "total_systems": total,
            "coverage_pct": cov.coverage_pct(self.coverage, total),
            "snapshot_complete": self.snapshot_complete,
            "target_met": self.target_met(),
            "started_at": self.started_at.isoformat(timespec="seconds"),
        }
        if self.outcome is not None:
            result["exit_code"] = self.outcome.exit_code
            result["message"] = self.outcome.message
        return result


class RunOwner:
    """Base of the extension that owns the :class:`RunRecord` (found by :func:`get_run`)."""

    run: RunRecord | None = None


def get_run(crawler: Crawler) -> RunRecord:
    """The crawl's :class:`RunRecord`; only valid from ``spider_opened`` on."""
    owner = crawler.get_extension(RunOwner)
    if owner is None or owner.run is None:
        raise RuntimeError("the run record exists from spider_opened on (is the Checkpoints extension enabled?)")
    return owner.run


def find_run(crawler: Crawler) -> RunRecord | None:
    """Like :func:`get_run`, but ``None`` before the record exists."""
    try:
        return get_run(crawler)
    except RuntimeError:
        return None
