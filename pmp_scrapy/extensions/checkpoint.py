"""Checkpoints: owns the run record and the store; plans each run from the database and decides
how it ended. The decisions themselves are pure functions (:mod:`pmp_scrapy.plan`,
:mod:`pmp_scrapy.coverage`, :mod:`pmp_scrapy.outcome`); this extension wires them to signals.

At ``spider_opened``: creates the :class:`~pmp_scrapy.run.RunRecord`, opens the database, reads
coverage and stops the run before any request when the target is met (and no gap of the current
snapshot is open); otherwise plans the run (a checkpoint that cannot be right is logged and
replaced by a new snapshot from page 1; ``reset=1`` or a complete sweep starts a new snapshot).

At ``spider_closed``: decides the exit code (0 done, 1 fatal, 2 partial), records the run in
``dcapi_runs`` (a failure to record turns a success into exit 1), closes the store, and sends
``run_finished`` with the run summary, awaiting every handler (Slack, the hook).

Reads ``PMP_COVERAGE_TARGET``, ``PMP_TOTAL_SYSTEMS``, ``PMP_BATCH_PAGES``, ``PMP_PAGE_LIMIT``,
``PMP_RESET``. Writes ``dcapi_snapshots``, ``dcapi_runs``; stats ``pmp/exit_code``,
``pmp/coverage``, ``pmp/denominator``, ``pmp/snapshot_id``, ``pmp/first_page`` (a report).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import CloseSpider

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import get_config
from pmp_scrapy.coverage import target_met
from pmp_scrapy.credentials import resolve_secret
from pmp_scrapy.errors import StorageError
from pmp_scrapy.footprint import release_startup_caches
from pmp_scrapy.lock_share import lent_lock
from pmp_scrapy.logformat import set_log_context
from pmp_scrapy.masking import register_operator_host
from pmp_scrapy.outcome import SKIPPED_REASON, TARGET_MET_REASON, RunFacts, decide_outcome
from pmp_scrapy.plan import PlanDecision, RunPlan, RunState, decide, make_plan
from pmp_scrapy.run import RunOwner, RunRecord
from pmp_scrapy.storage import Store
from pmp_scrapy.storage.engine import database_host, safe_url
from pmp_scrapy.storage.locks import LockHeld, TenantLock, acquire_tenant_lock, fingerprint, tenant_key
from pmp_scrapy.storage.token_mints import claim_mint
from pmp_scrapy.storage.watchdog import call_within

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class Checkpoints(RunOwner):
    """See the module docstring."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = get_config(crawler)
        self.store = Store(self.config.database_url, busy_timeout=self.config.sqlite_busy_timeout)
        self.stats = crawler.stats
        self._leave_database_alone = False
        self._lock: TenantLock | None = None
        for url in (self.config.base_url, self.config.accounts_url):
            register_operator_host(urlsplit(url).hostname)  # log lines name the operator's own hosts
        register_operator_host(database_host(self.config.database_url))

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    # --- opening ------------------------------------------------------------------------------------
    def spider_opened(self, spider: Spider) -> None:
        config = self.config
        run = self.run = RunRecord(customer=config.customer, target=config.coverage_target,
                                   configured_total=config.total_systems)
        set_log_context(customer=config.customer)
        if config.demo:
            self._refuse_foreign_database()
        release_startup_caches()
        try:
            self.store.open()
            self._take_tenant_lock()
            state = run.state = self.store.load_state(config.customer_key)
            run.coverage = run.coverage_at_start = self.store.coverage(config.customer_key)
            run.previous_coverage = self.store.previous_coverage(config.customer_key)
        except StorageError as exc:
            self._abort("pmp_database_error", str(exc))
        self.stats.set_value("pmp/coverage", run.coverage)
        total = run.denominator()
        if total:
            self.stats.set_value("pmp/denominator", total)
        decision = decide(state, reset=config.reset, target_met=target_met(run.coverage, total, config.coverage_target),
                          refresh_interval=config.refresh_interval)
        if decision.idle_reason is not None:
            assert total is not None
            self.stats.set_value("pmp/target_met", True)
            logger.info("coverage target already met: %d of %d systems (%.1f%%); nothing to do: %s",
                        run.coverage, total, 100.0 * run.coverage / total, decision.idle_reason,
                        extra={"event_type": "target_met", "coverage": run.coverage, "total_systems": total,
                               "coverage_pct": run.coverage_pct(), "snapshot_id": state.snapshot_id,
                               "reason": decision.idle_reason})
            raise CloseSpider(TARGET_MET_REASON)
        try:
            plan = run.plan = self._plan(state, decision)
        except StorageError as exc:
            self._abort("pmp_database_error", str(exc))
        set_log_context(snapshot_id=plan.snapshot_id)
        self.stats.set_value("pmp/snapshot_id", plan.snapshot_id)
        self.stats.set_value("pmp/first_page", plan.first_page)
        logger.info(
            "batch start: snapshot %d, %s, retrying %d open gap(s)", plan.snapshot_id,
            f"pages {plan.first_page} to {plan.batch_end or 'the last page'}"
            if plan.first_page is not None else "no new pages",
            len(plan.retry_pages),
            extra={"event_type": "batch_start", "snapshot_id": plan.snapshot_id,
                   "first_page": plan.first_page, "batch_end": plan.batch_end,
                   "retry_pages": plan.retry_pages, "new_snapshot": plan.new_snapshot,
                   "coverage": run.coverage, "total_systems": total},
        )

    def _take_tenant_lock(self) -> None:
        """One sweeping run per tenant (PMP host + credentials): a run that finds the lock held
        sends nothing and exits 0 (``run_skipped``); a customer of a ``customer=all`` job runs
        under the job's lock (:mod:`pmp_scrapy.lock_share`). Also shares Zoho's token budget with every
        other run of the client through the database."""
        run = self.run
        assert run is not None
        credential = resolve_secret("PMP_API_KEY" if self.config.auth == "apikey" else "PMP_CLIENT_ID",
                                    self.crawler.settings) or ""
        held = lent_lock(self.crawler) or acquire_tenant_lock(self.config.database_url,
                                                              tenant_key(self.config.base_url, credential))
        if isinstance(held, LockHeld):
            self._leave_database_alone = True  # the run that holds the lock records its own outcome
            run.abort(SKIPPED_REASON, f"another run of this tenant is in progress ({held.describe()}); "
                                      "this one sent nothing")
            logger.info("run skipped: another run of this tenant is in progress, %s", held.describe(),
                        extra={"event_type": "run_skipped", "holder_host": held.host, "holder_pid": held.pid,
                               "holder_since": held.since.isoformat() if held.since else None})
            raise CloseSpider(SKIPPED_REASON)
        self._lock = held
        if self.config.auth == "oauth" and credential:
            client_key, engine = fingerprint(credential), self.store.engine
            run.claim_token_mint = lambda: claim_mint(engine, client_key, time.time())

    def _abort(self, reason: str, message: str) -> None:
        assert self.run is not None
        self.run.abort(reason, message)
        logger.error("run aborted: %s", message, extra={"event_type": "run_aborted", "reason": reason})
        raise CloseSpider(reason)

    def _refuse_foreign_database(self) -> None:
        """Demo data never goes into a real database (checked before the database is touched)."""
        problem = Store.foreign_data(self.config.database_url, busy_timeout=self.config.sqlite_busy_timeout)
        if problem is not None:
            self._leave_database_alone = True  # not even the run is recorded in it
            self._abort("pmp_config_error", f"demo mode refuses the database {safe_url(self.config.database_url)}: "
                        f"{problem}; name another one with -s PMP_DATABASE_URL=sqlite:///pmp_demo.db")

    def _plan(self, state: RunState, decision: PlanDecision) -> RunPlan:
        snapshot_id = state.snapshot_id
        if decision.new_snapshot_reason is not None:
            reason = decision.new_snapshot_reason
            if decision.invalid_checkpoint:
                logger.warning("checkpoint cannot be right (%s); starting a new snapshot from page 1", reason,
                               extra={"event_type": "checkpoint_invalid", "reason": reason})
            snapshot_id = self.store.start_snapshot(self.config.customer_key, self.config.page_limit,
                                                    abandon=decision.abandon,
                                                    source="demo" if self.config.demo else "pmp")
            logger.info("new snapshot %d (%s)", snapshot_id, reason,
                        extra={"event_type": "snapshot_started", "snapshot_id": snapshot_id, "reason": reason})
        assert snapshot_id is not None
        plan = make_plan(decision, state, snapshot_id, self.config.batch_pages, self.config.page_limit)
        if plan.page_limit != self.config.page_limit:
            logger.warning("snapshot %d was started with pageLimit %d and keeps it; PMP_PAGE_LIMIT %d applies "
                           "from the next snapshot", snapshot_id, plan.page_limit, self.config.page_limit,
                           extra={"event_type": "page_limit_kept", "snapshot_page_limit": plan.page_limit,
                                  "configured": self.config.page_limit})
        return plan

    # --- closing -----------------------------------------------------------------------------------------
    async def spider_closed(self, spider: Spider, reason: str) -> None:
        run = self.run
        if run is None or run.outcome is not None:  # never opened, or closed already (a forced stop)
            return
        total = run.denominator()
        planned = run.planned_pages()
        if planned is not None and run.plan is not None:
            planned -= sum(1 for page in run.plan.retry_pages if page < 0)  # catalog gaps are not pages here
        run.outcome = decide_outcome(RunFacts(
            close_reason=reason, abort_message=run.abort_message, gaps_open=run.gaps_opened,
            gaps_resolved=run.gaps_resolved, pages_committed=run.pages_committed,
            mappings_upserted=run.mappings_upserted, snapshot_complete=run.snapshot_complete,
            coverage=run.coverage, total_systems=total, total_records=run.total_records,
            target=self.config.coverage_target, target_met=run.target_met(),
            reconcile_refused=(run.reconciliation.message
                               if run.reconciliation is not None and run.reconciliation.state == "refused" else None),
            abort_reason=run.abort_reason, pages_planned=planned, pages_settled=run.pages_settled))
        self._warn_if_coverage_fell(reason)
        if total and run.coverage > total:
            logger.warning("coverage is above 100%%: %d systems with mappings of a denominator of %d; the denominator "
                           "(PMP_TOTAL_SYSTEMS, else the managed-system count) is too low", run.coverage, total,
                           extra={"event_type": "coverage_over_denominator", "coverage": run.coverage,
                                  "total_systems": total})
        if not self._leave_database_alone:
            self._undo_unused_snapshot()
            self._record(reason)
        outcome = run.outcome
        summary = {"close_reason": reason, **run.summary()}
        self.stats.set_value("pmp/exit_code", outcome.exit_code)
        self.stats.set_value("pmp/exit_message", outcome.message)
        level = {0: logging.INFO, 1: logging.ERROR}.get(outcome.exit_code, logging.WARNING)
        logger.log(level, "run finished (exit %d): %s", outcome.exit_code, outcome.message,
                   extra={"event_type": outcome.event, "summary_line": outcome.exit_code == 0,
                          **{k: v for k, v in summary.items() if k != "message"}})
        self.store.close()
        if self._lock is not None:
            # after the last commit: the next run of this tenant may start. Bounded: a PostgreSQL
            # that stopped answering frees the lock itself when the session goes.
            if not call_within(self._lock.release, max(self.config.sqlite_busy_timeout, 1.0)):
                logger.warning("the run lock was not released: the database does not answer (it frees the lock "
                               "when the session ends)", extra={"event_type": "run_lock_release_failed"})
            self._lock = None
        await self.crawler.signals.send_catch_log_async(pmp_signals.run_finished, summary=summary)

    def _undo_unused_snapshot(self) -> None:
        """A fatal run (authentication, token, configuration) that started a snapshot and wrote
        nothing to it takes it back: the previous sweep is not abandoned for nothing."""
        run = self.run
        assert run is not None and run.outcome is not None
        plan = run.plan
        if (plan is None or not plan.new_snapshot or run.outcome.exit_code != 1 or run.pages_committed
                or run.gaps_opened or run.gaps_resolved):
            return
        try:
            self.store.undo_snapshot_start(plan.snapshot_id, plan.abandoned)
        except StorageError as exc:
            logger.warning("could not take back the unused snapshot %d: %s", plan.snapshot_id, exc,
                           extra={"event_type": "snapshot_undo_failed"})
            return
        logger.info("snapshot %d taken back: the run failed before writing to it%s", plan.snapshot_id,
                    f"; snapshot {plan.abandoned} continues" if plan.abandoned else "",
                    extra={"event_type": "snapshot_undone", "snapshot_id": plan.snapshot_id,
                           "resumed": plan.abandoned})

    def _warn_if_coverage_fell(self, reason: str) -> None:
        run = self.run
        assert run is not None
        if run.previous_coverage is not None and run.coverage < run.previous_coverage and reason == "finished":
            logger.warning("coverage fell from %d to %d systems since the previous run (systems removed in PMP?)",
                           run.previous_coverage, run.coverage,
                           extra={"event_type": "coverage_decreased", "previous": run.previous_coverage,
                                  "coverage": run.coverage})

    def _record(self, reason: str) -> None:
        """Append the run to ``dcapi_runs``; a run that cannot be recorded is not a success."""
        run = self.run
        assert run is not None and run.outcome is not None
        outcome = run.outcome
        if run.plan is None and run.abort_reason == "pmp_database_error":
            # The database could not be opened (or read): recording would wait out the same lock
            # or fail the same way again. The run is fatal (exit 1) already.
            logger.error("the run is not recorded: the database could not be opened",
                         extra={"event_type": "run_record_failed"})
            return
        try:
            self.store.record_run(
                customer=self.config.customer_key, snapshot_id=run.snapshot_id,
                started_at=run.started_at.replace(tzinfo=None), close_reason=run.abort_reason or reason,
                exit_code=outcome.exit_code, pages_committed=run.pages_committed,
                gaps_opened=run.gaps_opened, gaps_resolved=run.gaps_resolved,
                mappings_upserted=run.mappings_upserted, systems_with_mappings=run.coverage,
                coverage_pct=run.coverage_pct(), message=outcome.message[:1000],
            )
        except StorageError as exc:
            logger.error("could not record the run: %s", exc, extra={"event_type": "run_record_failed"})
            if outcome.exit_code == 0:
                run.outcome = type(outcome)(1, str(exc), "batch_complete")
            elif outcome.exit_code != 1:  # a partial run that is not recorded is not "partial" either
                run.outcome = type(outcome)(1, f"{exc} (the run: {outcome.message})", "batch_complete")
