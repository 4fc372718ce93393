"""README stays true: its examples run against the demo data it describes. The quick start and
install lines are run by tests/test_demo.py and tests/test_install.py; here: the SQL over the
views, every `scrapy status` and `scrapy report` line, the jq recipes over a real JSON log, and
the hook example."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, scrapy_command, scrapy_env

README = (ROOT / "README.md").read_text(encoding="utf-8")
DEMO_URL = "sqlite:///pmp_demo.db"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's demo, once: ./pmp_demo.db and a JSON log, with the README's hook."""
    workdir = tmp_path_factory.mktemp("readme")
    [hook] = re.findall(r"^POST_EXTRACTION_HOOK='(.*?)' scrapy crawl dcapi_patches$", README, re.MULTILINE)
    result = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1", "-s", "DOWNLOAD_DELAY=0",
                             "-s", "LOG_FILE=pmp.log", "-s", f"POST_EXTRACTION_HOOK={hook}"], cwd=workdir,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_sql_examples_answer_on_the_demo_data(demo: Path) -> None:
    statements = [s for block in blocks("sql") for s in block.split(";") if s.strip()]
    assert len(statements) >= 5
    with sqlite3.connect(demo / "pmp_demo.db") as conn:
        for statement in statements:
            rows = conn.execute(statement).fetchall()
            assert rows, statement
            assert all(value is not None for value in rows[0][:3]), statement


def readme_commands(prefix: str) -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(prefix) and DEMO_URL in line:
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_status_and_report_line_runs_on_the_demo(demo: Path) -> None:
    commands = readme_commands("scrapy status") + readme_commands("scrapy report")
    assert len(commands) >= 9
    for args in commands:
        result = scrapy_command(args, cwd=demo)
        assert result.returncode == 0, (args, result.stderr[-1000:])
        assert result.stdout.strip() and "Traceback" not in result.stderr, args
        if "--format" in args and args[args.index("--format") + 1] == "json":
            assert json.loads(result.stdout)["systems_affected"] > 0
    assert (demo / "pmp_report.html").stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (apt-get install jq)")
def test_jq_recipes_read_the_demo_log(demo: Path) -> None:
    recipes = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("jq ")]
    assert len(recipes) >= 5
    for recipe in recipes:
        result = subprocess.run(recipe, shell=True, cwd=demo, capture_output=True, text=True, env=scrapy_env(),
                                check=False)
        assert result.returncode == 0, (recipe, result.stderr)
        if any(event in recipe for event in ("extraction_progress", "batch_complete", "token_refresh")):
            assert result.stdout.strip(), recipe  # the others have nothing to say about a clean demo


def test_the_hook_example_wrote_its_line(demo: Path) -> None:
    [line] = (demo / "coverage.tsv").read_text().splitlines()
    started, coverage, total, code = line.split("\t")
    assert (coverage, total, code) == ("3210", "3317", "0") and started
