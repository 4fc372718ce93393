"""``scrapy report --html`` opened where a person opens it: Debian's ``chromium``, headless. The
page renders with no console message (the console check is shown to catch one on a canary page),
its screenshot is not blank, and the coverage figure and system names from the database are in
the rendered DOM, one section per customer. The file is self-contained, private (0600) and
escapes what the database says.

Skipped with the reason when ``chromium`` is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from test_report import Crawled, crawl_into, execute, side_by_side

from pmp_scrapy.simulator import DatasetSpec, Scenario

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
TWO = Scenario(dataset=DatasetSpec(managed_systems=200), customers={"acme": DatasetSpec(managed_systems=100)})


@dataclass
class Page:
    """What Chromium made of a file: the DOM after rendering, its console lines, a screenshot."""

    dom: str
    console: list[str]
    screenshot: Path


def open_in_chromium(html: Path, tmp: Path) -> Page:
    """Render ``html`` twice in headless Chromium: the DOM with the console logged, then a
    1280x2000 screenshot."""
    assert CHROMIUM is not None
    base = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)
    shot = tmp / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", html.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Content Security Policy" in line]
    return Page(dom.stdout, console, shot)


def png_top_rows(path: Path, rows: int) -> tuple[int, int, list[bytes]]:
    """The first ``rows`` pixel rows (RGB) of an 8-bit RGB/RGBA PNG: (width, height, rows).
    Decoding stops there; a pure-Python unfilter of the whole 1280x2000 shot would take seconds."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, bytearray(), 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
    stride = width * bpp
    raw = zlib.decompressobj().decompress(bytes(idat), (stride + 1) * rows)
    previous, pixels = bytearray(stride), []
    for y in range(min(rows, height)):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], (previous[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        pixels.append(bytes(b for j, b in enumerate(line) if j % bpp < 3))
        previous = line
    return width, height, pixels


@pytest_twisted.async_yield_fixture(scope="module")
async def estate(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Crawled]:
    """Two customers (the default one and 'acme') swept into one SQLite database."""
    tmp = tmp_path_factory.mktemp("report_html")
    url = f"sqlite:///{tmp / 'report.db'}"
    expected = await crawl_into(url, tmp, TWO)
    await crawl_into(url, tmp, TWO, customer="acme")
    yield Crawled(url, "sqlite", expected)


def write_html(db: Crawled, target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return db.report("--html", str(target), *args)


@needs_chromium
def test_console_check_catches_an_error_on_a_canary_page(tmp_path: Path) -> None:
    canary = tmp_path / "canary.html"
    canary.write_text('<!DOCTYPE html><html><body><p>canary</p><script>console.error("canary-7f3")</script></body></html>')
    page = open_in_chromium(canary, tmp_path)
    assert any("canary-7f3" in line for line in page.console), page.console


@needs_chromium
def test_html_report_renders_in_chromium(estate: Crawled, tmp_path: Path) -> None:
    target = tmp_path / "out" / "compliance.html"
    target.parent.mkdir()
    written, default, acme = side_by_side([lambda: write_html(estate, target), lambda: estate.report("--format", "json"),
                                           lambda: estate.report("--customer", "acme", "--format", "json")])
    assert written.returncode == 0 and written.stdout == f"pmp_scrapy report: wrote {target}\n", written.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["compliance.html"]  # no temporary file left
    html = target.read_text(encoding="utf-8")
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page fetches something"
    assert "Content-Security-Policy" in html

    page = open_in_chromium(target, tmp_path)
    assert page.console == [], page.console
    summaries = [json.loads(default.stdout), json.loads(acme.stdout)]
    assert "Default customer" in page.dom and "Customer acme" in page.dom
    for summary in summaries:
        assert f"{summary['coverage_pct']:.1f}%" in page.dom
        assert summary["worst_systems"][0]["resource_name"] in page.dom
        assert f"{summary['systems']:,}</b> of {summary['managed_total']:,} managed" in page.dom

    width, height, rows = png_top_rows(page.screenshot, 700)
    assert (width, height) == (1280, 2000)
    pixels = [row[i:i + 3] for row in rows[::4] for i in range(0, len(row), 12)]
    ink = sum(1 for p in pixels if p != b"\xff\xff\xff") / len(pixels)
    assert ink > 0.05, f"the screenshot is blank ({ink:.1%} of it is not white)"
    assert len(set(pixels)) > 40, "the screenshot has almost no colours"
    assert any(p[0] > 150 and p[1] < 80 and p[2] < 80 for p in pixels), "no red (critical) bar was drawn"


@needs_chromium
def test_html_escapes_names_and_says_cve_data_unavailable(estate: Crawled, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with sqlite3.connect(estate.url.removeprefix("sqlite:///")) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    db = Crawled(f"sqlite:///{copy}", "sqlite", estate.expected)
    execute(db, "DELETE FROM dcapi_patch_cves")
    execute(db, "DELETE FROM dcapi_patch_catalog")
    [rid] = [row["resource_id"] for row in db.rows(
        "SELECT resource_id FROM dcapi_systems WHERE customer = '' ORDER BY patch_count DESC LIMIT 1")]
    execute(db, "UPDATE dcapi_systems SET resource_name = :name WHERE resource_id = :rid",
            name='<img src=x onerror="console.error(1)">&amp;', rid=rid)
    html = tmp_path / "escaped.html"
    result = write_html(db, html, "--customer", "")
    assert result.returncode == 0, result.stderr
    text = html.read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=" in text and "<img" not in text
    assert "CVE data unavailable" in text and "Customer acme" not in text
    page = open_in_chromium(html, tmp_path)
    assert page.console == [] and "<img" not in page.dom


def test_html_needs_a_writable_place(estate: Crawled, tmp_path: Path) -> None:
    result = write_html(estate, tmp_path / "no" / "such" / "dir" / "r.html")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"pmp_scrapy: --html: cannot write {tmp_path}/no/such/dir/r.html: No such file or directory\n"
    assert not os.path.exists(tmp_path / "no")
