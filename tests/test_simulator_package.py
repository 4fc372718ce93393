"""The simulator package as code: small typed modules, standard library only, and a --help
that documents the credentials and the whole scenario format."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario
from pmp_scrapy.simulator.faults import FAULT_MEANINGS, PAGE_FAULT_KINDS, TOKEN_FAULT_KINDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pmp_scrapy" / "simulator"
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_small_typed_documented_and_standard_library_only(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 300, f"{path.name} has {len(source.splitlines())} lines"
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module and node.module.split(".")[0] in sys.stdlib_module_names, (
                f"{path.name} imports {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {alias.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            untyped = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            assert not untyped and node.returns is not None, f"{path.name}:{node.lineno} {node.name} lacks hints"
    public = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    public += [m for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_")
               for m in c.body if isinstance(m, ast.FunctionDef)]
    for node in public:
        if not node.name.startswith("_"):
            assert ast.get_docstring(node), f"{path.name}:{node.lineno} {node.name} has no docstring"


def help_text() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pmp_scrapy.simulator", "--help"], check=False,
                         capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_help_documents_credentials_options_and_the_scenario_format() -> None:
    text = help_text()
    for value in DEMO_CREDENTIALS.values():
        assert value in text
    for word in ("client_id", "client_secret", "refresh_token", "api_key", "--host", "--port", "--scenario",
                 "--seed", "--allow-remote", "Zoho-oauthtoken", "/_sim/mutate"):
        assert word in text
    for f in fields(Scenario):
        assert f.name in text, f"scenario field {f.name} is not in --help"
    for kind in PAGE_FAULT_KINDS | TOKEN_FAULT_KINDS | {"rate_limited", "drop_reused"}:
        assert kind in text
    assert set(FAULT_MEANINGS) == PAGE_FAULT_KINDS | TOKEN_FAULT_KINDS
    for form in ("after_page_requests", "add_systems", "remove_systems", "resource_ids", '"where"', '"front"',
                 '"middle"', '"end"', "flip_status", '"share"', '"count"', "to_installed", "add_patches",
                 "remove_patches", "per_system", "max_per_second", '"html_200"', '"every"', '"unsupported"',
                 '"404"', "10022"):
        assert form in text, form
    example = text[text.index("example:\n") + len("example:\n"):]
    assert Scenario.from_dict(json.loads(example)).rate_limit is not None  # the example is a valid scenario
