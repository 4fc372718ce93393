"""Batches bounded by bytes as well as pages (``PMP_BATCH_BYTES``, issue 12): a batch whose packed
pages reach the bound commits before ``PMP_CHECKPOINT_EVERY`` pages, and the checkpoint it writes
never claims a page whose rows are not committed with it.

- the setting: default, validation naming it;
- the pipeline without a crawl (component test): pages fed one by one, commits counted;
- a real crawl whose pages are big against the bound: early commits, each checking at the moment
  it lands that every page up to the checkpoint is stored, and the whole tenant stored at the end.
"""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    SWEEP,
    TEN_PAGES,
    component_crawler,
    crawl_settings,
    db_rows,
    expected_table,
    mapping_table,
    oauth_env,
    project_settings,
)
from scrapy.crawler import CrawlerRunner
from scrapy.utils.defer import deferred_f_from_coro_f
from test_components_run import RUN_COMPONENTS, opened_run, page_item, stored_pages, systems_of
from test_units import config

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import read
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.rows import page_rows
from pmp_scrapy.simulator import Scenario, Simulator
from pmp_scrapy.spiders.dcapi_patches import DcapiPatchesSpider
from pmp_scrapy.storage import Batch


def test_the_byte_bound_defaults_to_8_mib_and_is_validated_by_name() -> None:
    assert read(project_settings(), "PMP_BATCH_BYTES") == 8 * 1024 * 1024
    for bad in ("0", "-5", "8MB", "1.5"):
        with pytest.raises(ConfigError, match=f"PMP_BATCH_BYTES must be a positive integer, got '{bad}'"):
            config(PMP_BATCH_BYTES=bad)


def test_a_batch_counts_the_bytes_it_keeps() -> None:
    batch = Batch(snapshot_id=1, customer="")
    assert batch.packed_bytes == 0
    rows = page_rows(systems_of(1), 1)
    batch.add_page(rows.mappings, rows.systems)
    one = len(pickle.dumps((rows.mappings, rows.systems), protocol=pickle.HIGHEST_PROTOCOL))
    assert batch.packed_bytes == one
    batch.add_page([], [])  # an empty page keeps nothing
    batch.add_page(rows.mappings, rows.systems)
    assert batch.packed_bytes == 2 * one


def one_page_bytes() -> int:
    """What one page of the component tests keeps, packed (all pages there are alike), its
    systems marked with the totalRecords they were seen in, as the pipeline marks them."""
    batch = Batch(snapshot_id=1, customer="")
    rows = page_rows(systems_of(1), 1)
    for system in rows.systems:
        system["total_records"] = 30
    batch.add_page(rows.mappings, rows.systems)
    return batch.packed_bytes


@pytest.mark.parametrize(("pages_per_batch", "bound"), [
    (1, 1),  # every page reaches the bound alone: one commit a page
    (2, lambda one: one + 1),  # two pages pass it
    (3, lambda one: 3 * one),  # exactly at the bound counts as reached
])
@deferred_f_from_coro_f
async def test_the_pipeline_commits_once_the_batch_reaches_the_byte_bound(
        pages_per_batch: int, bound: Any, db_path: Path) -> None:
    limit = bound if isinstance(bound, int) else bound(one_page_bytes())
    crawler = component_crawler(db_path=db_path, PMP_CHECKPOINT_EVERY=10, PMP_TOTAL_SYSTEMS=30,
                                PMP_BATCH_BYTES=limit, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        for page in range(1, 8):
            await opened.pipeline.process_item(page_item(opened.run, page))
            committed = page - page % pages_per_batch
            checkpoint = db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints")
            assert checkpoint == ([(committed,)] if committed else []), f"after page {page}"
            assert stored_pages(db_path) == set(range(1, committed + 1)), f"after page {page}"
        assert crawler.stats.get_value("pmp/batches_ended_by_bytes") == 7 // pages_per_batch
    # the rest commits at close, as before
    assert stored_pages(db_path) == set(range(1, 8))
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(7,)]


@deferred_f_from_coro_f
async def test_below_the_byte_bound_batches_are_counted_in_pages(db_path: Path) -> None:
    crawler = component_crawler(db_path=db_path, PMP_CHECKPOINT_EVERY=3, PMP_TOTAL_SYSTEMS=30, **RUN_COMPONENTS)
    async with opened_run(crawler) as opened:
        for page in range(1, 8):
            await opened.pipeline.process_item(page_item(opened.run, page))
        assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(6,)]
        assert crawler.stats.get_value("pmp/batches_ended_by_bytes") is None


def checkpoint_and_stored_pages(db_path: Path) -> tuple[int, set[int]]:
    """The checkpoint's page and the pages whose systems are stored, read apart from the crawl's
    own connection (what another reader of the database sees once a commit has landed)."""
    with sqlite3.connect(db_path) as conn:
        last = conn.execute("SELECT last_page FROM dcapi_extraction_checkpoints").fetchone()
        pages = {int(p) for (p,) in conn.execute(
            "SELECT DISTINCT s.last_seen_page FROM dcapi_systems s "
            "JOIN patch_system_mapping m ON m.resource_id = s.resource_id")}
    return (last[0] if last else 0), pages


@pytest_twisted.ensureDeferred
async def test_big_pages_commit_early_and_the_checkpoint_claims_only_committed_pages(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten pages of 30 systems (~1,500 mappings a page, some 80 KB packed) with PMP_BATCH_BYTES at
    150 KB and PMP_CHECKPOINT_EVERY at 10: the batch reaches the bound every second page or so,
    not every tenth. At each commit, as it lands, every page up to the checkpoint is stored."""
    for name, value in oauth_env().items():
        monkeypatch.setenv(name, value)
    seen: list[tuple[int, set[int]]] = []
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        settings = crawl_settings(sim, db_path, **{**SWEEP, "PMP_CHECKPOINT_EVERY": 10, "PMP_BATCH_BYTES": 150_000,
                                                   "PMP_CATALOG_PAGE_LIMIT": 0})
        crawler = CrawlerRunner(settings).create_crawler(DcapiPatchesSpider)
        crawler.signals.connect(lambda **_: seen.append(checkpoint_and_stored_pages(db_path)),
                                signal=pmp_signals.batch_committed, weak=False)
        await crawler.crawl()
        stats = crawler.stats.get_stats()
        assert stats["pmp/exit_code"] == 0, stats.get("pmp/exit_message")
        assert mapping_table(db_path) == expected_table(sim)
    assert stats.get("pmp/batches_ended_by_bytes", 0) >= 3, stats
    assert len(seen) >= 4, seen  # PMP_CHECKPOINT_EVERY alone would commit once
    for last, pages in seen:
        assert set(range(1, last + 1)) <= pages, (last, sorted(pages))
    assert seen[-1][0] == 10
