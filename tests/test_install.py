"""Packaging and the ``pmp-scrapy`` entry point.

- requirements.txt and pyproject.toml declare the same runtime dependencies;
- the package installs (not editable) into a fresh virtual environment and, from an empty
  directory with no scrapy.cfg and no PYTHONPATH, runs the demo, ``status`` and ``--help``;
- the egg scrapyd-deploy builds holds every package and data file, with or without pyproject.toml
  beside setup.py, and a template is readable from the zipped egg;
- ``pmp-scrapy`` passes exit codes through, refuses unknown commands in one line, runs the simulator.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, SECRET_ENV, db_rows, oauth_env, scrapy_env
from packaging.requirements import Requirement

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: What a build of the package reads: the copy the install and egg tests build from.
PACKAGING_INPUTS = ("pyproject.toml", "setup.py", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info")


def requirement_key(text: str) -> tuple[str, frozenset[str], str, str]:
    """A requirement in comparable form: normalised name, extras, specifiers, marker."""
    req = Requirement(text)
    return (re.sub(r"[-_.]+", "-", req.name).lower(), frozenset(req.extras), str(req.specifier),
            str(req.marker or ""))


def requirements_file(path: Path) -> list[str]:
    """The requirement lines of ``path`` (no comments, blank lines or ``-r`` includes)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def package_files(package_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``package_dir``, caches excluded."""
    return {str(p.relative_to(package_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


def source_copy(dest: Path, *, with_pyproject: bool = True) -> Path:
    """A copy of the checkout's packaging inputs and ``pmp_scrapy/`` at ``dest``: builds write
    ``build/`` and ``*.egg-info`` next to their sources, and the checkout is shared."""
    shutil.copytree(ROOT / "pmp_scrapy", dest / "pmp_scrapy", ignore=IGNORED)
    for name in PACKAGING_INPUTS:
        if with_pyproject or name != "pyproject.toml":
            shutil.copy(ROOT / name, dest / name)
    return dest


def clean_env(home: Path) -> dict[str, str]:
    """The environment of an operator's shell: no PYTHONPATH to the checkout, no SCRAPY_* or
    PMP_* value, no secret, no keyring (null backend), a fresh HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMP_", "SCRAPY_")) and k not in (*SECRET_ENV, "PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    env["HOME"] = str(home)
    return env


def run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 120,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def can_build_without_isolation() -> bool:
    """``pip install --no-build-isolation`` builds a wheel with this interpreter's setuptools,
    which needs the ``wheel`` package before setuptools 70.1."""
    from importlib.metadata import version as installed_version

    version = tuple(int(part) for part in re.findall(r"\d+", installed_version("setuptools"))[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


# --- metadata ------------------------------------------------------------------------------------

def test_requirements_txt_and_pyproject_dependencies_agree() -> None:
    from_requirements = sorted(requirement_key(line) for line in requirements_file(ROOT / "requirements.txt"))
    from_pyproject = sorted(requirement_key(line) for line in PYPROJECT["project"]["dependencies"])
    assert from_requirements == from_pyproject
    assert "jinja2" in {key[0] for key in from_pyproject}
    dev = {requirement_key(line)[0] for line in requirements_file(ROOT / "requirements-dev.txt")}
    assert {"ruff", "mypy", "wheel", "pytest"} <= dev


def test_pyproject_declares_the_entry_points_scrapyd_and_operators_use() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "pmp_scrapy" and project["requires-python"] == ">=3.11"
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert project["scripts"] == {"pmp-scrapy": "pmp_scrapy.cli:main"}
    assert project["entry-points"]["scrapy"] == {"settings": "pmp_scrapy.settings"}
    import pmp_scrapy

    assert project["version"] == pmp_scrapy.__version__


# --- a fresh virtual environment -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not can_build_without_isolation(),
                    reason="pip install --no-build-isolation needs the wheel package with setuptools < 70.1 "
                           "(pip install -r requirements-dev.txt)")
def test_installed_package_runs_demo_status_and_help_from_an_empty_directory(tmp_path: Path) -> None:
    src = source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    home, workdir = tmp_path / "home", tmp_path / "empty"
    home.mkdir()
    workdir.mkdir()
    env = clean_env(home)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   capture_output=True, timeout=120)
    python, script = venv / "bin" / "python", venv / "bin" / "pmp-scrapy"
    # --no-index: nothing is downloaded; dependencies come from this interpreter's site-packages.
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                     "--disable-pip-version-check", "-q", src], cwd=workdir, env=env, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert script.is_file()

    # A real (not editable) install of the checkout's files, imported from the venv.
    where = run([python, "-c", ("import json, pmp_scrapy, importlib.metadata as m; print(json.dumps("
                                "[pmp_scrapy.__file__, m.distribution('pmp_scrapy').read_text('direct_url.json')]))")],
                cwd=workdir, env=env)
    assert where.returncode == 0, where.stderr
    module_file, direct_url = json.loads(where.stdout)
    package_dir = Path(module_file).parent
    assert package_dir.is_relative_to(venv) and "site-packages" in package_dir.parts, module_file
    origin = json.loads(direct_url)
    assert origin["url"] == src.as_uri() and not origin.get("dir_info", {}).get("editable", False), origin
    assert package_files(package_dir) == package_files(src / "pmp_scrapy")  # every module and data file

    shown = run([script, "--help"], cwd=workdir, env=env)
    assert shown.returncode == 0, shown.stderr
    for command in ("crawl", "status", "simulator", "credentials"):
        assert re.search(rf"^  {command} ", shown.stdout, re.MULTILINE), shown.stdout
    if (ROOT / "pmp_scrapy" / "commands" / "report.py").exists():
        assert re.search(r"^  report ", shown.stdout, re.MULTILINE), shown.stdout
    assert "cannot load" not in shown.stdout

    demo = run([script, "crawl", "dcapi_patches", "-a", "demo=1", "-s", "PMP_PROGRESS=off"],
               cwd=workdir, env=env, timeout=240)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr
    assert demo.stdout.startswith("pmp_scrapy: exit 0: "), demo.stdout
    assert sorted(p.name for p in workdir.iterdir() if not p.name.startswith("pmp_demo.db-")) == ["pmp_demo.db"]
    with Simulator() as sim:  # the demo's data set: the database holds all of it
        expected = sum(1 for _ in sim.expected_mappings())
    db = workdir / "pmp_demo.db"
    assert db_rows(db, "SELECT COUNT(*) FROM patch_system_mapping") == [(expected,)]
    (systems,) = db_rows(db, "SELECT COUNT(DISTINCT resource_id) FROM patch_system_mapping")[0]

    status = run([script, "status", "-s", "PMP_DATABASE_URL=sqlite:///pmp_demo.db"], cwd=workdir, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "pmp_demo.db" in status.stdout and f"{systems:,} systems with mappings" in status.stdout, status.stdout
    as_json = run([script, "status", "--json", "-s", "PMP_DATABASE_URL=sqlite:///pmp_demo.db"],
                  cwd=workdir, env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert str(systems) in as_json.stdout
    json.loads(as_json.stdout)


# --- the egg scrapyd-deploy builds ---------------------------------------------------------------

def build_egg(src: Path) -> zipfile.ZipFile:
    """``python setup.py bdist_egg`` in ``src``, as scrapyd-deploy runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMP_", "SCRAPY_")) and k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "setup.py", "bdist_egg", "-d", "dist"], cwd=src, env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (egg,) = (src / "dist").glob("*.egg")
    return zipfile.ZipFile(egg)


def egg_files(egg: zipfile.ZipFile) -> set[str]:
    """The package files of ``egg``: no EGG-INFO, no byte code."""
    return {n for n in egg.namelist() if not n.startswith("EGG-INFO/") and not n.endswith("/")
            and "__pycache__" not in n and not n.endswith((".pyc", ".pyo"))}


def test_egg_holds_every_package_and_template_with_or_without_pyproject(tmp_path: Path) -> None:
    eggs = {}
    for variant, with_pyproject in (("checkout", True), ("bare", False)):
        src = source_copy(tmp_path / variant, with_pyproject=with_pyproject)
        # The report templates' directory (pmp_scrapy/reporting/templates/*.j2): a probe file in it.
        templates = src / "pmp_scrapy" / "reporting" / "templates"
        templates.mkdir(parents=True, exist_ok=True)
        (templates / "packaging_probe.j2").write_text("probe {{ value }}\n", encoding="utf-8")
        eggs[variant] = build_egg(src)
        names = egg_files(eggs[variant])
        expected = {f"pmp_scrapy/{name}" for name in package_files(src / "pmp_scrapy")}
        assert names == expected, (variant, sorted(expected ^ names))
        entry_points = eggs[variant].read("EGG-INFO/entry_points.txt").decode()
        assert re.search(r"^\[scrapy\]\nsettings = pmp_scrapy.settings$", entry_points, re.MULTILINE), entry_points
    assert egg_files(eggs["checkout"]) == egg_files(eggs["bare"])

    # scrapyd puts the zipped egg itself on sys.path: the template must load from the zip.
    egg_path = eggs["checkout"].filename
    env = {**clean_env(tmp_path), "PYTHONPATH": str(egg_path)}
    code = (f"import jinja2, pmp_scrapy; assert pmp_scrapy.__file__.startswith({str(egg_path)!r}); "
            "e = jinja2.Environment(loader=jinja2.PackageLoader('pmp_scrapy', 'reporting/templates')); "
            "print(e.get_template('packaging_probe.j2').render(value=42))")
    loaded = run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "probe 42"


# --- the entry point, from outside the checkout ----------------------------------------------------

def cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
        ) -> subprocess.CompletedProcess[str]:
    """``pmp-scrapy ARGS`` (as ``python -m pmp_scrapy.cli``) from ``cwd``, with the checkout on
    PYTHONPATH but no SCRAPY_SETTINGS_MODULE: the entry point must find the settings itself."""
    full_env = scrapy_env(env)
    full_env.pop("SCRAPY_SETTINGS_MODULE", None)
    return run([sys.executable, "-m", "pmp_scrapy.cli", *args], cwd=cwd, env=full_env, timeout=timeout)


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    for args in ([], ["--help"], ["-h"]):
        shown = cli(args, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("usage: pmp-scrapy <command>")
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
        for command in ("crawl", "status", "simulator", "credentials"):
            assert re.search(rf"^  {command} ", shown.stdout, re.MULTILINE), shown.stdout


def test_unknown_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = cli(["crawll"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["pmp_scrapy: error: unknown command 'crawll' (see pmp-scrapy --help)"]


def test_exit_codes_pass_through(tmp_path: Path, db_path: Path) -> None:
    fatal = cli(["crawl", "dcapi_patches"], cwd=tmp_path)
    assert fatal.returncode == 1, fatal.stderr[-2000:]
    assert fatal.stderr.startswith("pmp_scrapy: error: PMP_BASE_URL is required")
    assert not list(tmp_path.iterdir())

    scenario = Scenario(dataset=DatasetSpec(managed_systems=90, no_patch_share=0.0),
                        faults=[Fault(page=2, kind="http_503")])
    with Simulator(scenario=scenario) as sim:
        partial = cli(["crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"], cwd=tmp_path,
                      env={**oauth_env(sim), "PMP_BASE_URL": sim.url, "PMP_ACCOUNTS_URL": sim.url,
                           "PMP_DATABASE_URL": f"sqlite:///{db_path}", "DOWNLOAD_DELAY": "0",
                           "PMP_BACKOFF_BASE": "0.05", "PMP_BATCH_PAGES": "0"})
    assert partial.returncode == 2, partial.stderr[-2000:]
    assert "pmp_scrapy: exit 2:" in partial.stderr


def test_simulator_subcommand_serves_until_terminated(tmp_path: Path) -> None:
    env = scrapy_env()
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    process = subprocess.Popen([sys.executable, "-m", "pmp_scrapy.cli", "simulator", "--port", "0"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert re.fullmatch(r"PMP simulator listening on http://127\.0\.0\.1:\d+\n", first), first
    finally:
        process.terminate()
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
