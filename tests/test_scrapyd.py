"""scrapyd for real: start scrapyd on 127.0.0.1 (a free port, a temporary directory), deploy the
project with scrapyd-deploy, schedule ``dcapi_patches`` for two customers with settings and
arguments against the simulator, poll ``listjobs.json`` until both finish, then check the
database (exact rows per customer) and each job's log (JSON lines, exit code, no secret).

The project is deployed from a temporary copy whose ``scrapy.cfg`` points ``[deploy]`` at the
free port, so the repository is left untouched (scrapyd-deploy writes a ``setup.py`` when there
is none). scrapyd gets no ``PYTHONPATH``: the job runs from the egg alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    SECRET_ENV,
    assert_no_secrets,
    crawl_env,
    expected_table,
    json_log_lines,
    mapping_table,
    oauth_env,
)

from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Scenario, Simulator

pytest.importorskip("scrapyd", reason="scrapyd is not installed (pip install -r requirements-dev.txt)")
pytest.importorskip("scrapyd_client", reason="scrapyd-client is not installed (pip install -r requirements-dev.txt)")
DEPLOY = shutil.which("scrapyd-deploy") or str(Path(sys.executable).with_name("scrapyd-deploy"))
if not os.access(DEPLOY, os.X_OK):
    pytest.skip("the scrapyd-deploy command is not installed (pip install -r requirements-dev.txt)",
                allow_module_level=True)

PROJECT = "pmp_scrapy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, endpoint: str, data: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(f"{base}/{endpoint}", data=body, timeout=10) as response:
        return json.loads(response.read())


class Scrapyd:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for name in ("eggs", "logs", "dbs"):
            (workdir / name).mkdir()
        (workdir / "scrapyd.conf").write_text(
            "[scrapyd]\n"
            f"bind_address = 127.0.0.1\nhttp_port = {self.port}\n"
            f"eggs_dir = {workdir / 'eggs'}\nlogs_dir = {workdir / 'logs'}\ndbs_dir = {workdir / 'dbs'}\n"
            "items_dir =\njobs_to_keep = 5\npoll_interval = 0.5\nmax_proc = 4\n")
        self.out = open(workdir / "scrapyd.out", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "scrapyd"], cwd=workdir, env=env,
                                        stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if api(self.url, "daemonstatus.json").get("status") == "ok":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"scrapyd did not start: {(workdir / 'scrapyd.out').read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


def job_log_summary(tmp_path: Path, job_id: str) -> str:
    """The job's log lines above INFO and its outcome, to explain a failed assertion."""
    log = tmp_path / "scrapyd" / "logs" / PROJECT / "dcapi_patches" / f"{job_id}.log"
    if not log.exists():
        return f"no log for job {job_id}"
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if '"WARNING"' in line or '"ERROR"' in line or '"CRITICAL"' in line or "exit_code" in line
             or not line.startswith("{")]
    return "\n".join(lines[-30:])


@pytest.fixture
def scrapyd(tmp_path: Path) -> Iterator[Scrapyd]:
    workdir = tmp_path / "scrapyd"
    workdir.mkdir()
    # The node's environment: no PYTHONPATH (the egg must suffice), no secret of the developer.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMP_", "SCRAPY_")) and k not in (*SECRET_ENV, "PYTHONPATH")}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    # Credentials live with the node (keyring or environment), never in schedule.json.
    env.update(oauth_env())
    server = Scrapyd(workdir, env)
    yield server
    server.stop()


def deploy(target_url: str, workdir: Path) -> None:
    """scrapyd-deploy from a temporary copy of the project whose deploy target is ``target_url``."""
    copy = workdir / "project"
    shutil.copytree(ROOT / "pmp_scrapy", copy / "pmp_scrapy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if (ROOT / "setup.py").exists():
        shutil.copy(ROOT / "setup.py", copy / "setup.py")
    cfg = (ROOT / "scrapy.cfg").read_text()
    assert "url = http://127.0.0.1:6800/" in cfg and f"project = {PROJECT}" in cfg
    (copy / "scrapy.cfg").write_text(cfg.replace("http://127.0.0.1:6800/", target_url + "/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMP_", "SCRAPY_"))}
    result = subprocess.run([DEPLOY, "default", "--version", "r1"], cwd=copy, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"status": "ok"' in result.stdout, result.stdout + result.stderr


def test_scrapyd_deploy_schedule_and_check_database_and_logs(scrapyd: Scrapyd, tmp_path: Path) -> None:
    deploy(scrapyd.url, tmp_path)
    assert api(scrapyd.url, "listprojects.json")["projects"] == [PROJECT]
    assert "dcapi_patches" in api(scrapyd.url, f"listspiders.json?project={PROJECT}")["spiders"]
    (egg,) = (tmp_path / "scrapyd" / "eggs" / PROJECT).glob("*.egg")
    names = set(zipfile.ZipFile(egg).namelist())
    assert {"pmp_scrapy/settings.py", "pmp_scrapy/simulator/server.py", "pmp_scrapy/storage/store.py",
            "pmp_scrapy/commands/crawl.py", "pmp_scrapy/spiders/dcapi_patches.py"} <= names

    db = tmp_path / "pmp.db"
    scenario = Scenario(customers={"acme": DatasetSpec(managed_systems=300, no_patch_share=0.0),
                                   "globex": DatasetSpec(managed_systems=240, no_patch_share=0.0, seed=9)})
    with Simulator(scenario=scenario) as sim:
        jobs = {}
        # The crawl's settings travel in schedule.json; its credentials never do.
        settings = {name: value for name, value in crawl_env(sim, db, AUTOTHROTTLE_ENABLED=False, PMP_BATCH_PAGES=0,
                                                            PMP_CHECKPOINT_EVERY=3).items() if name not in SECRET_ENV}
        # One tenant allows one sweeping run at a time (the second job would skip): the two jobs
        # reach the simulator under two host names, as two tenants would, and run at once.
        hosts = {"acme": sim.url, "globex": sim.url.replace("127.0.0.1", "localhost")}
        for customer in ("acme", "globex"):
            data = [("project", PROJECT), ("spider", "dcapi_patches"), ("customer", customer)]
            data += [("setting", f"{name}={value}") for name, value in
                     {**settings, "PMP_BASE_URL": hosts[customer], "PMP_ACCOUNTS_URL": hosts[customer]}.items()]
            answer = api(scrapyd.url, "schedule.json", data)
            assert answer["status"] == "ok", answer
            jobs[customer] = answer["jobid"]

        deadline = time.monotonic() + 90
        while True:
            listing = api(scrapyd.url, f"listjobs.json?project={PROJECT}")
            finished = {job["id"]: job for job in listing["finished"]}
            if set(jobs.values()) <= set(finished):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"scrapyd jobs did not finish in 90 s: {listing}")
            time.sleep(0.5)

        # Every page request named one of the two customers, and each job asked for each of its
        # customer's pages.
        pages = [r for r in sim.requests if r.kind == "page"]
        assert {r.customer for r in pages} <= set(jobs), {r.customer for r in pages}
        for customer, job_id in jobs.items():
            assert {r.customer for r in pages if r.customer == customer} == {customer}, job_log_summary(tmp_path, job_id)
            crawled = {r.page for r in pages if r.customer == customer}
            assert crawled == set(range(1, sim.total_pages(30, customer) + 1)), job_log_summary(tmp_path, job_id)
        expected = {customer: expected_table(sim, customer) for customer in jobs}
        tokens = sim.issued_tokens

    # The database: exactly both customers' rows, both snapshots complete, both runs exit 0.
    table = mapping_table(db)
    assert table == {**expected["acme"], **expected["globex"]}
    import sqlite3

    with sqlite3.connect(db) as conn:
        runs = dict(conn.execute("SELECT customer, exit_code FROM dcapi_runs").fetchall())
        snaps = dict(conn.execute("SELECT customer, state FROM dcapi_snapshots").fetchall())
    assert runs == {"acme": 0, "globex": 0}
    assert snaps == {"acme": "complete", "globex": "complete"}

    # The logs: scrapyd's LOG_FILE per job, one JSON object a line, the exit code, no secret.
    secrets = [*DEMO_CREDENTIALS.values(), *tokens]
    for customer, job_id in jobs.items():
        log = tmp_path / "scrapyd" / "logs" / PROJECT / "dcapi_patches" / f"{job_id}.log"
        assert log.exists(), sorted(p.name for p in log.parent.iterdir())
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        records = json_log_lines(log)
        assert_no_secrets({log.name: log.read_bytes()}, secrets)
        # The run's outcome: batch_complete, or target_met when the sweep met the target.
        done = [r for r in records if r.get("event_type") in ("batch_complete", "target_met") and "exit_code" in r]
        assert len(done) == 1 and done[0]["exit_code"] == 0, done
        assert done[0].get("customer") == customer
        assert any(r.get("event_type") == "checkpoint_saved" for r in records)
        assert not [r for r in records if r.get("level") in ("ERROR", "CRITICAL")]
    out = (tmp_path / "scrapyd" / "scrapyd.out").read_bytes()
    assert_no_secrets({"scrapyd output": out}, secrets)
