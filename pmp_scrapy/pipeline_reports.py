"""What the pipeline's commits changed, told to the run record (shared state), stats (the report)
and the log: catalog answers, the reconciliation at the end of a snapshot and the pages to
read again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pmp_scrapy.items import CatalogGap, CatalogUnavailable
from pmp_scrapy.plan import page_list

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from pmp_scrapy.items import CatalogPage
    from pmp_scrapy.plan import RunPlan
    from pmp_scrapy.run import RunRecord
    from pmp_scrapy.storage.batch import CheckpointResult, Reconciliation

logger = logging.getLogger("pmp_scrapy.pipelines")


def record_catalog(run: RunRecord, stats: StatsCollector, plan: RunPlan,
                   item: CatalogPage | CatalogGap | CatalogUnavailable, result: Any) -> None:
    """What a catalog commit changed, in the run record (gaps count as a page's would) and stats."""
    if isinstance(item, CatalogUnavailable):
        stats.set_value("pmp/catalog/state", "unavailable")
        return
    if -item.page in plan.retry_pages:
        run.pages_settled += 1
    if isinstance(item, CatalogGap):
        run.gaps_settled += 1
        run.gaps_opened += 1
    else:
        stats.inc_value("pmp/catalog/patches", result.patches)
        stats.inc_value("pmp/catalog/cves", result.cves)
        if item.rows.skipped:
            stats.inc_value("pmp/catalog/skipped_patches", item.rows.skipped)
    if result.healed:
        run.gaps_resolved += 1
        logger.info("gap on catalog page %d healed", item.page,
                    extra={"event_type": "gap_resolved", "page": -item.page, "endpoint": "catalog"})
    stats.set_value("pmp/gaps_recorded", run.gaps_opened)
    stats.set_value("pmp/gaps_healed", run.gaps_resolved)
    if item.end is None:
        return
    state = result.state
    stats.set_value("pmp/catalog/state", state)
    if result.prune_skipped:
        logger.warning("catalog complete, but patches it no longer lists were kept: %s", result.prune_skipped,
                       extra={"event_type": "catalog_prune_skipped", "reason": result.prune_skipped})
    logger.info(
        "patch catalog %s: %s", state or "unfinished",
        {"complete": f"{result.pruned} patch(es) no longer listed were removed",
         "partial": f"{result.open_gaps} page(s) are gaps; the next run of this snapshot retries them",
         None: "the page count never came; the next run of this snapshot sweeps the catalog again"}.get(state, ""),
        extra={"event_type": "catalog_finished", "catalog_state": state, "open_gaps": result.open_gaps,
               "pruned": result.pruned},
    )


def report_reconciliation(run: RunRecord, stats: StatsCollector, outcome: Reconciliation) -> None:
    """A snapshot's reconciliation, in the run record, stats and log."""
    run.reconciliation = outcome
    if outcome.state == "refused":
        logger.warning("reconciliation refused: %s", outcome.message,
                       extra={"event_type": "reconcile_refused", "present_systems": outcome.present_systems})
        return
    stats.set_value("pmp/retired_systems", outcome.retired_systems)
    logger.info("snapshot reconciled: %d system(s) no longer reported were retired with %d mapping(s); "
                "%d present", outcome.retired_systems, outcome.retired_mappings, outcome.present_systems,
                extra={"event_type": "snapshot_reconciled", "summary_line": not outcome.retired_systems,
                       "retired_systems": outcome.retired_systems,
                       "retired_mappings": outcome.retired_mappings,
                       "present_systems": outcome.present_systems})


def report_reread(run: RunRecord, stats: StatsCollector, result: CheckpointResult) -> None:
    """Pages a commit asks to read again because the tenant shifted in a way ``totalRecords``
    did not show: handed to the spider through the run record, said in the log."""
    if result.seen_twice_at is None and not result.unseen_systems:
        return
    run.pages_to_reread.update(result.reread_pages)
    pages = page_list(result.reread_pages)
    if result.seen_twice_at is not None:
        stats.inc_value("pmp/shifts_seen_twice")
        logger.warning("the tenant changed during the sweep: a system of page %d was already reported on an "
                       "earlier page (systems were added before it); reading pages %s again so that none is "
                       "missed", result.seen_twice_at, pages,
                       extra={"event_type": "tenant_changed", "detected": "system_seen_twice",
                              "page": result.seen_twice_at, "reread_pages": result.reread_pages})
    if result.unseen_systems:
        stats.set_value("pmp/systems_verified", result.unseen_systems)
        logger.info("%d present system(s) were not reported in this sweep: reading pages %s again, where "
                    "they were last seen, before retiring them", result.unseen_systems, pages,
                    extra={"event_type": "retirement_verified", "unseen_systems": result.unseen_systems,
                           "reread_pages": result.reread_pages})
