"""Checkpoints: plans each run from the database and decides how it ended.

At ``spider_opened``: opens the database, reads coverage and stops the run before any request
when the target is met (and no gap of the current snapshot is open); validates the checkpoint
(a negative page, a page past the last one, or a checkpoint pointing at a snapshot that does
not exist is logged and replaced by a new snapshot from page 1); starts a new snapshot on
``reset=1`` or after a complete sweep; hands the spider its :class:`~pmp_scrapy.plan.RunPlan`.

At ``spider_closed``: maps the close reason, the gaps and the coverage to the exit code
(``pmp/exit_code``: 0 done, 1 fatal, 2 partial), explains a coverage that stalls below the
target, records the run in ``dcapi_runs`` and sends ``run_finished`` with the run summary.

Reads ``PMP_COVERAGE_TARGET``, ``PMP_TOTAL_SYSTEMS``, ``PMP_BATCH_PAGES``, ``PMP_PAGE_LIMIT``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import CloseSpider

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import get_config
from pmp_scrapy.errors import StorageError
from pmp_scrapy.logformat import set_log_context
from pmp_scrapy.plan import RunPlan, Watermark
from pmp_scrapy.runstop import FATAL_REASONS
from pmp_scrapy.storage import RunState, get_store

if TYPE_CHECKING:
    from typing_extensions import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


def target_systems(target: float, denominator: int) -> int:
    """Systems needed to meet ``target`` of ``denominator`` (95% of 3,317 is 3,152)."""
    needed = target * denominator
    whole = int(needed)
    return whole if whole == needed else whole + 1


class Checkpoints:
    """See the module docstring."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = get_config(crawler)
        self.store = get_store(crawler)
        self.stats = crawler.stats
        self.plan: RunPlan | None = None
        self.state: RunState | None = None
        self.started_at = datetime.now(timezone.utc)
        self.coverage_at_start: int | None = None
        self.previous_coverage: int | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    # --- opening ------------------------------------------------------------------------------------
    def spider_opened(self, spider: Spider) -> None:
        customer = self.config.customer_key
        set_log_context(customer=self.config.customer)
        try:
            self.store.open()
            state = self.state = self.store.load_state(customer)
            coverage = self.coverage_at_start = self.store.coverage(customer)
            self.previous_coverage = self.store.previous_coverage(customer)
        except StorageError as exc:
            self._abort("pmp_database_error", str(exc))
        self.stats.set_value("pmp/coverage", coverage)
        denominator = self.config.total_systems or state.managed_total
        if denominator:
            self.stats.set_value("pmp/denominator", denominator)
        open_gaps = state.open_gap_pages if state.snapshot_id is not None else []
        if (not self.config.reset and denominator
                and coverage >= target_systems(self.config.coverage_target, denominator) and not open_gaps):
            pct = 100.0 * coverage / denominator
            self.stats.set_value("pmp/target_met", True)
            self.stats.set_value("pmp/exit_code", 0)
            logger.info("coverage target already met: %d of %d systems (%.1f%%); nothing to do",
                        coverage, denominator, pct,
                        extra={"event_type": "target_met", "coverage": coverage, "total_systems": denominator,
                               "coverage_pct": round(pct, 2), "snapshot_id": state.snapshot_id})
            raise CloseSpider("pmp_target_met")
        try:
            self.plan = self._make_plan(state)
        except StorageError as exc:
            self._abort("pmp_database_error", str(exc))
        spider.plan = self.plan  # type: ignore[attr-defined]
        set_log_context(snapshot_id=self.plan.snapshot_id)
        self.stats.set_value("pmp/snapshot_id", self.plan.snapshot_id)
        self.stats.set_value("pmp/first_page", self.plan.first_page)
        logger.info(
            "batch start: snapshot %d, %s, retrying %d open gap(s)", self.plan.snapshot_id,
            f"pages {self.plan.first_page} to {self.plan.batch_end or 'the last page'}"
            if self.plan.first_page is not None else "no new pages",
            len(self.plan.retry_pages),
            extra={"event_type": "batch_start", "snapshot_id": self.plan.snapshot_id,
                   "first_page": self.plan.first_page, "batch_end": self.plan.batch_end,
                   "retry_pages": self.plan.retry_pages, "new_snapshot": self.plan.new_snapshot,
                   "coverage": coverage, "total_systems": denominator},
        )

    def _abort(self, reason: str, message: str) -> None:
        self.stats.set_value("pmp/abort_reason", reason)
        self.stats.set_value("pmp/abort_message", message)
        logger.error("run aborted: %s", message, extra={"event_type": "run_aborted", "reason": reason})
        raise CloseSpider(reason)

    def _make_plan(self, state: RunState) -> RunPlan:
        config = self.config
        customer = config.customer_key
        reason = None
        if config.reset:
            reason = "reset requested"
        elif state.orphan_checkpoint_snapshot is not None:
            reason = f"the newest checkpoint points at snapshot {state.orphan_checkpoint_snapshot}, which does not exist"
        elif state.snapshot_id is None:
            reason = "first run"
        elif state.last_page is not None and state.last_page < 0:
            reason = f"the checkpoint of snapshot {state.snapshot_id} is at page {state.last_page}"
        elif (state.last_page is not None and state.total_pages is not None
              and state.last_page > state.total_pages):
            reason = (f"the checkpoint of snapshot {state.snapshot_id} is at page {state.last_page}, "
                      f"past the last page {state.total_pages}")
        if reason is not None and reason not in ("first run", "reset requested"):
            logger.warning("checkpoint cannot be right (%s); starting a new snapshot from page 1", reason,
                           extra={"event_type": "checkpoint_invalid", "reason": reason})
        if reason is None and state.snapshot_state != "running":
            if state.open_gap_pages:
                return self._plan(state.snapshot_id, None, state, retry=state.open_gap_pages)
            reason = "the previous sweep is complete"
        if reason is not None:
            abandon = state.snapshot_id if state.snapshot_state == "running" else None
            snapshot_id = self.store.start_snapshot(customer, config.page_limit, abandon=abandon)
            logger.info("new snapshot %d (%s)", snapshot_id, reason,
                        extra={"event_type": "snapshot_started", "snapshot_id": snapshot_id, "reason": reason})
            return self._plan(snapshot_id, 1, RunState(managed_total=state.managed_total), retry=[], new=True)
        assert state.snapshot_id is not None
        return self._plan(state.snapshot_id, (state.last_page or 0) + 1, state, retry=state.open_gap_pages)

    def _plan(self, snapshot_id: int, first_page: int | None, state: RunState, *, retry: list[int],
              new: bool = False) -> RunPlan:
        batch = self.config.batch_pages
        batch_end = first_page + batch - 1 if (first_page is not None and batch) else None
        return RunPlan(
            snapshot_id=snapshot_id, customer=self.config.customer_key, first_page=first_page,
            batch_end=batch_end, retry_pages=list(retry), known_total_pages=state.total_pages,
            known_managed_total=state.managed_total, new_snapshot=new,
            watermark=Watermark((first_page or 1) - 1),
        )

    # --- closing -----------------------------------------------------------------------------------------
    def spider_closed(self, spider: Spider, reason: str) -> None:
        summary = self._summarise(reason)
        self.stats.set_value("pmp/exit_code", summary["exit_code"])
        self.stats.set_value("pmp/exit_message", summary["message"])
        level = logging.INFO if summary["exit_code"] == 0 else logging.WARNING
        if summary["exit_code"] == 1:
            level = logging.ERROR
        event = "target_met" if summary.get("target_met") else "batch_complete"
        logger.log(level, "run finished (exit %d): %s", summary["exit_code"], summary["message"],
                   extra={"event_type": event, **{k: v for k, v in summary.items() if k != "message"}})
        self._record(summary, reason)
        self.store.close()
        self.crawler.signals.send_catch_log(pmp_signals.run_finished, summary=summary)

    def _summarise(self, reason: str) -> dict[str, Any]:
        stats = self.stats
        gaps_open = int(stats.get_value("pmp/gaps_recorded", 0))
        coverage = int(stats.get_value("pmp/coverage", self.coverage_at_start or 0) or 0)
        denominator = (self.config.total_systems or stats.get_value("pmp/managed_total")
                       or (self.plan.known_managed_total if self.plan else None)
                       or stats.get_value("pmp/total_records") or stats.get_value("pmp/denominator"))
        summary: dict[str, Any] = {
            "close_reason": reason,
            "customer": self.config.customer,
            "snapshot_id": self.plan.snapshot_id if self.plan else (self.state.snapshot_id if self.state else None),
            "pages_committed": int(stats.get_value("pmp/pages_committed", 0)),
            "mappings_upserted": int(stats.get_value("pmp/mappings_upserted", 0)),
            "gaps_opened": gaps_open,
            "gaps_resolved": int(stats.get_value("pmp/gaps_healed", 0)),
            "checkpoint_page": stats.get_value("pmp/checkpoint_page"),
            "total_pages": stats.get_value("pmp/total_pages") or (self.plan.known_total_pages if self.plan else None),
            "coverage": coverage,
            "total_systems": denominator,
            "coverage_pct": round(100.0 * coverage / denominator, 2) if denominator else None,
            "snapshot_complete": bool(stats.get_value("pmp/snapshot_complete", False)),
            "started_at": self.started_at.isoformat(timespec="seconds"),
        }
        met = bool(denominator) and coverage >= target_systems(self.config.coverage_target, denominator)
        summary["target_met"] = met
        if reason == "pmp_target_met":
            code, message = 0, f"coverage target already met ({coverage} of {denominator} systems)"
        elif reason in FATAL_REASONS:
            code, message = 1, str(stats.get_value("pmp/abort_message") or reason)
        elif reason != "finished":
            code, message = 2, f"the run was interrupted ({reason}); the next run resumes from the checkpoint"
        elif gaps_open:
            code, message = 2, (f"{gaps_open} page(s) ended as gaps; the next run of this snapshot retries them "
                                "(see `scrapy status`)")
        elif summary["snapshot_complete"] and not met and denominator:
            code, message = 2, self._stall_explanation(coverage, denominator)
        else:
            code = 0
            message = (f"batch done: {summary['pages_committed']} pages, {summary['mappings_upserted']} mappings; "
                       f"coverage {coverage} of {denominator or '?'} systems"
                       + (f" ({summary['coverage_pct']}%)" if summary["coverage_pct"] is not None else ""))
        if self.previous_coverage is not None and coverage < self.previous_coverage and reason == "finished":
            logger.warning("coverage fell from %d to %d systems since the previous run (systems removed in PMP?)",
                           self.previous_coverage, coverage,
                           extra={"event_type": "coverage_decreased", "previous": self.previous_coverage,
                                  "coverage": coverage})
        summary["exit_code"] = code
        summary["message"] = message
        return summary

    def _stall_explanation(self, coverage: int, denominator: int) -> str:
        records = self.stats.get_value("pmp/total_records")
        needed = target_systems(self.config.coverage_target, denominator)
        text = (f"the sweep is complete but coverage is {coverage} of {denominator} managed systems "
                f"({100.0 * coverage / denominator:.1f}%), below the target of {needed}")
        if records is not None and records < denominator:
            text += (f": DCAPI reports only {records} systems; {denominator - records} managed systems have "
                     "no patch records in DCAPI, so no sweep can reach the target (lower PMP_COVERAGE_TARGET "
                     "or set PMP_TOTAL_SYSTEMS to the systems you expect to have patch data)")
        return text

    def _record(self, summary: dict[str, Any], reason: str) -> None:
        try:
            self.store.record_run(
                customer=self.config.customer_key, snapshot_id=summary["snapshot_id"],
                started_at=self.started_at.replace(tzinfo=None), close_reason=reason,
                exit_code=summary["exit_code"], pages_committed=summary["pages_committed"],
                gaps_opened=summary["gaps_opened"], gaps_resolved=summary["gaps_resolved"],
                mappings_upserted=summary["mappings_upserted"], systems_with_mappings=summary["coverage"],
                coverage_pct=summary["coverage_pct"], message=summary["message"][:1000],
            )
        except StorageError as exc:
            logger.error("could not record the run: %s", exc, extra={"event_type": "run_record_failed"})
            if summary["exit_code"] == 0:
                summary["exit_code"] = 1
                summary["message"] = str(exc)
