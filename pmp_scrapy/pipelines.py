"""Item pipeline: page items become rows; every ``PMP_CHECKPOINT_EVERY`` pages, or sooner once
the batch's packed rows reach ``PMP_BATCH_BYTES`` or a page far above the usual size (more than
``storage.batch.PART_ROWS`` rows) joins it (and at close), one transaction commits the
rows, the gaps, healed gaps and the checkpoint that covers them.

Reads ``PMP_CHECKPOINT_EVERY``, ``PMP_BATCH_BYTES``, ``PMP_TOTAL_SYSTEMS``. Writes ``patch_system_mapping``,
``dcapi_systems``, ``dcapi_extraction_gaps``, ``dcapi_gap_state``,
``dcapi_extraction_checkpoints``; stats ``pmp/pages_committed``, ``pmp/mappings_upserted``,
``pmp/gaps_recorded``, ``pmp/gaps_healed``, ``pmp/checkpoint_page``, ``pmp/coverage``,
``pmp/batches_ended_by_bytes``, ``pmp/batches_ended_by_wide_page``. Sends
``batch_committed``. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import DropItem
from scrapy.utils.asyncio import run_in_thread

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import get_config, read
from pmp_scrapy.errors import StorageError
from pmp_scrapy.extensions.checkpoint import Checkpoints
from pmp_scrapy.items import CatalogGap, CatalogPage, CatalogUnavailable, InventoryTotal, PageGap, PatchPage
from pmp_scrapy.pipeline_reports import record_catalog, report_reconciliation, report_reread
from pmp_scrapy.run import get_run
from pmp_scrapy.runstop import stop_run
from pmp_scrapy.storage import Batch, CheckpointResult
from pmp_scrapy.storage.batch import PART_ROWS
from pmp_scrapy.values_guard import one_line

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from pmp_scrapy.plan import RunPlan
    from pmp_scrapy.run import RunRecord
    from pmp_scrapy.storage import Store

logger = logging.getLogger(__name__)


class MappingPipeline:
    """See the module docstring."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = get_config(crawler)
        self.batch_bytes: int = read(crawler.settings, "PMP_BATCH_BYTES")
        owner = crawler.get_extension(Checkpoints)
        if owner is None:
            raise RuntimeError("MappingPipeline needs the Checkpoints extension (it owns the store and the run)")
        self.store: Store = owner.store
        self.stats = crawler.stats
        # Pages enter batches one at a time, in arrival order, and wait while a batch commits.
        self._admit = asyncio.Lock()
        self._batch: Batch | None = None
        self._pages: list[int] = []
        self._page_count = 0
        self._failed = False
        self._wide_page = False  # the page just added has more than PART_ROWS rows
        self._systems_seen = 0
        self._mappings_seen = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @property
    def run(self) -> RunRecord:
        return get_run(self.crawler)

    @property
    def plan(self) -> RunPlan:
        plan = self.run.plan
        assert plan is not None, "the checkpoint extension plans the run at spider_opened"
        return plan

    async def process_item(self, item: Any) -> Any:
        if self._failed:
            raise self._refused(item)
        if isinstance(item, InventoryTotal):
            self.run.managed_total = item.managed_total
            await self._write(self.store.set_managed_total, item.snapshot_id, item.managed_total)
            return item
        if isinstance(item, (CatalogPage, CatalogGap, CatalogUnavailable)):
            return await self._process_catalog(item)
        if not isinstance(item, (PatchPage, PageGap)):
            return item
        # Pages join batches in the order they arrive (asyncio.Lock wakes its waiters in order),
        # so the checkpoint keeps up. Backpressure: while a full batch commits, arriving pages
        # wait; their responses stay in Scrapy's scraper slot, which stops the downloader once
        # SCRAPER_SLOT_MAX_ACTIVE_SIZE is reached. Memory holds one batch however fast PMP answers.
        async with self._admit:
            if self._failed:
                raise self._refused(item)
            self._add(item)
            planned = self.run.planned_pages()
            if self._page_count >= self.config.checkpoint_every:
                await self.flush()
            elif planned is not None and self.run.pages_settled >= planned:
                # The run's pages are all in: commit before the spider idles, so that what the
                # commit asks to read again (pipeline_reports.report_reread) is read in this run.
                await self.flush()
            elif self._batch is not None and self._batch.packed_bytes >= self.batch_bytes:
                self.stats.inc_value("pmp/batches_ended_by_bytes")
                await self.flush()
            elif self._wide_page:
                # A page far above the usual size commits at once: the batch keeps its parts
                # packed, and the next such page is not asked for until this one is stored.
                self.stats.inc_value("pmp/batches_ended_by_wide_page")
                await self.flush()
            self._wide_page = False
        return item

    @staticmethod
    def _refused(item: Any) -> DropItem:
        """A page that arrives after a database failure is not stored. Its rows go at once, so
        that Scrapy's drop log line, which carries the item, stays short (never the page)."""
        if isinstance(item, (PatchPage, CatalogPage)):
            item.rows = type(item.rows)()
        return DropItem("the database failed earlier in this run; nothing more is stored")

    def _add(self, item: PatchPage | PageGap) -> None:
        """Turn a page into rows (or a gap) in the current batch."""
        batch = self._current_batch()
        if isinstance(item, PatchPage):
            rows = item.rows
            for system in rows.systems:
                system["total_records"] = item.total_records  # which state of the tenant it was seen in
            assert isinstance(rows.mappings, list), "a page's rows join one batch, once"
            batch.add_page(rows.mappings, rows.systems, packed=rows.parts, packed_mappings=rows.part_mappings)
            batch.page_totals[item.page] = item.total_records
            batch.total_pages = self.run.total_pages = item.total_pages
            batch.total_records = self.run.total_records = item.total_records
            if item.retried_gap:
                batch.healed_pages.append(item.page)
            else:
                self._pages.append(item.page)
            for key, value in (("skipped_patches", rows.skipped_patches), ("skipped_systems", rows.skipped_systems),
                               ("duplicate_patches", rows.duplicate_patches), ("empty_systems", rows.empty_systems)):
                if value:
                    self.stats.inc_value(f"pmp/{key}", value)
            self._log_progress(item, rows.system_count, rows.mapping_count)
            if rows.mapping_count > PART_ROWS:
                rows.release()  # packed now; Scrapy holds the item (and its body) until the commit ends
                self._wide_page = True
        elif isinstance(item, PageGap):
            self.run.pages_settled += 1
            self.run.gaps_settled += 1
            batch.gaps.append({"page_num": item.page, "error_type": item.error_type,
                               "error_message": item.error_message, "response_sample": item.response_sample,
                               "attempts": item.attempts, "http_status": item.http_status})
            if not item.retried_gap:
                self._pages.append(item.page)
        self._page_count += 1

    # --- the patch catalog: each answer its own small transaction, one commit at a time ---------------
    async def _process_catalog(self, item: CatalogPage | CatalogGap | CatalogUnavailable) -> Any:
        """Store one catalog answer (rows, a gap of page_num -N, or "unavailable") and, with the
        sweep's last answer, the snapshot's ``catalog_state``."""
        from pmp_scrapy.storage.catalog import CatalogCommit

        customer = self.config.customer_key
        if isinstance(item, CatalogUnavailable):
            commit = CatalogCommit(customer, item.snapshot_id, 0, unavailable=True)
        elif isinstance(item, CatalogGap):
            commit = CatalogCommit(customer, item.snapshot_id, item.page, end=item.end, gap={
                "error_type": item.error_type, "error_message": item.error_message,
                "response_sample": item.response_sample, "attempts": item.attempts, "http_status": item.http_status})
        else:
            commit = CatalogCommit(customer, item.snapshot_id, item.page, rows=item.rows, end=item.end)
        async with self._admit:
            if self._failed:
                raise self._refused(item)
            try:
                result = await run_in_thread(self.store.commit_catalog_page, commit)
            except StorageError as exc:
                self._failed = True
                stop_run(self.crawler, "pmp_database_error", str(exc))
                return item
        record_catalog(self.run, self.stats, self.plan, item, result)
        return item

    async def close_spider(self) -> None:
        """Commit whatever is buffered, so a clean stop loses nothing."""
        async with self._admit:
            await self.flush()

    def _current_batch(self) -> Batch:
        if self._batch is None:
            self._batch = Batch(snapshot_id=self.plan.snapshot_id, customer=self.config.customer_key,
                                max_retire_share=self.config.max_retire_share)
        return self._batch

    async def flush(self) -> None:
        """Commit the buffered pages and move the checkpoint, in one transaction. Callers hold
        the admission lock, so one commit runs at a time and no page joins a committing batch."""
        batch, pages = self._batch, self._pages
        if batch is None or self._failed:
            return
        self._batch, self._pages, self._page_count = None, [], 0
        watermark = self.plan.watermark
        # The watermark moves only in this copy until the transaction has committed.
        candidate = watermark.peek(pages)
        batch.last_page = candidate if (pages or candidate) else None
        batch.denominator = self.run.denominator()
        try:
            result = await run_in_thread(self.store.commit_batch, batch)
        except Exception as exc:  # the store's error or our own: fatal, in one line
            self._failed = True
            if not isinstance(exc, StorageError):
                logger.debug("the batch commit raised", exc_info=True)
            stop_run(self.crawler, "pmp_database_error", str(exc) if isinstance(exc, StorageError) else
                     one_line(f"committing a batch failed: {type(exc).__name__}: {exc}"))
            return
        for page in pages:
            watermark.mark(page)
        self._record_commit(batch, pages, result)
        for page in batch.healed_pages:
            logger.info("gap on page %d healed", page, extra={"event_type": "gap_resolved", "page": page})
        logger.info(
            "checkpoint saved at page %s (%d systems, %d mappings, coverage %.1f%%)",
            result.last_page, result.systems_extracted, result.patches_extracted, result.coverage_pct,
            extra={"event_type": "checkpoint_saved", "last_page": result.last_page,
                   "systems_extracted": result.systems_extracted,
                   "patches_extracted": result.patches_extracted, "coverage_pct": result.coverage_pct,
                   "coverage": result.coverage},
        )
        self.crawler.signals.send_catch_log(pmp_signals.batch_committed, result=result, pages=pages,
                                            gaps=batch.gaps)

    def _record_commit(self, batch: Batch, pages: list[int], result: CheckpointResult) -> None:
        """What a commit changed, in the run record (shared state) and in stats (the report)."""
        run = self.run
        run.pages_committed += len(pages)
        run.mappings_upserted += batch.mapping_count
        run.gaps_opened += len(batch.gaps)
        run.gaps_resolved += len(batch.healed_pages)
        run.checkpoint_page = result.last_page
        run.coverage = result.coverage
        run.systems_extracted = result.systems_extracted
        run.patches_extracted = result.patches_extracted
        run.snapshot_complete = run.snapshot_complete or result.snapshot_complete
        changes = result.changes
        if changes is not None:
            for key in ("new", "changed", "status_changes", "retired", "returned"):
                if getattr(changes, key):
                    self.stats.inc_value(f"pmp/mappings_{key}", getattr(changes, key))
        if result.reconciliation is not None:
            report_reconciliation(self.run, self.stats, result.reconciliation)
        report_reread(self.run, self.stats, result)
        for key, value in (("pages_committed", run.pages_committed), ("mappings_upserted", run.mappings_upserted),
                           ("gaps_recorded", run.gaps_opened), ("gaps_healed", run.gaps_resolved),
                           ("checkpoint_page", result.last_page), ("coverage", result.coverage),
                           ("coverage_pct", result.coverage_pct), ("systems_extracted", result.systems_extracted),
                           ("patches_extracted", result.patches_extracted),
                           ("snapshot_complete", run.snapshot_complete)):
            self.stats.set_value(f"pmp/{key}", value)

    async def _write(self, fn: Any, *args: Any) -> None:
        try:
            await run_in_thread(fn, *args)
        except StorageError as exc:
            self._failed = True
            stop_run(self.crawler, "pmp_database_error", str(exc))

    def _log_progress(self, item: PatchPage, systems: int, mappings: int) -> None:
        run = self.run
        run.pages_settled += 1
        self._systems_seen += systems
        self._mappings_seen += mappings
        logger.info(
            "page %d/%d: %d systems, %d mappings", item.page, item.total_pages, systems, mappings,
            extra={"event_type": "extraction_progress", "page": item.page, "total_pages": item.total_pages,
                   "systems_extracted": self._systems_seen, "patches_extracted": self._mappings_seen,
                   "total_systems": run.denominator(), "progress_pct": run.progress_pct(),
                   "sweep_pct": run.sweep_pct(),
                   "errors_total": run.gaps_settled, "eta_minutes": run.eta_minutes()},
        )
