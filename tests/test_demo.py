"""The README's quick start, exactly as a newcomer types it: ``scrapy crawl dcapi_patches -a demo=1``
in an empty directory, with no credentials and no PMP settings at all."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest import DEFAULT_DCAPI, DEFAULT_MANAGED, DEFAULT_MAPPINGS, DEFAULT_PAGES, SECRET_ENV, scrapy_command


@pytest.mark.slow  # the whole default tenant at the default 4 requests a second (about 30 s)
def test_demo_sweeps_the_default_tenant_into_pmp_demo_db(tmp_path: Path) -> None:
    workdir = tmp_path / "empty"
    workdir.mkdir()
    assert not any(k.startswith("PMP_") or k in SECRET_ENV for k in os.environ)
    result = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1"], cwd=workdir, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "pmp_scrapy: error" not in result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("pmp_scrapy: exit")]
    assert line.startswith(f"pmp_scrapy: exit 0: batch done: {DEFAULT_PAGES} pages, {DEFAULT_MAPPINGS} mappings"), line
    assert f"coverage {DEFAULT_DCAPI} of {DEFAULT_MANAGED} systems (96.77%)" in line

    db = workdir / "pmp_demo.db"
    assert db.is_file()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for companion in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        if companion.exists():
            assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion.name
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM patch_system_mapping").fetchone() == (DEFAULT_MAPPINGS,)
        systems = conn.execute("SELECT COUNT(DISTINCT resource_id) FROM patch_system_mapping").fetchone()
        assert systems == (DEFAULT_DCAPI,)
        snapshots = conn.execute("SELECT state, total_pages FROM dcapi_snapshots").fetchall()
        assert snapshots == [("complete", DEFAULT_PAGES)]
    # Nothing else was left behind in the working directory.
    leftovers = {p.name for p in workdir.iterdir()} - {"pmp_demo.db", "pmp_demo.db-wal", "pmp_demo.db-shm"}
    assert leftovers == set()
