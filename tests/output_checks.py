"""Secret checks shared by the crawl tests: an autouse fixture that searches this process's
stdout and stderr, and a function that searches the log file, the database files and any text.
Import the fixture into a test module to use it (``from output_checks import console_has_no_secret``);
the ``log_file`` fixture lives in conftest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_no_secrets

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Simulator

_ISSUED: list[str] = []  # access tokens issued in the current test, for the console check


def fixed_secrets() -> list[str]:
    """The simulator's client secret, refresh token and API key."""
    return [DEMO_CREDENTIALS["client_secret"], DEMO_CREDENTIALS["refresh_token"], DEMO_CREDENTIALS["api_key"]]


@pytest.fixture(autouse=True)
def console_has_no_secret(capfd: pytest.CaptureFixture[str]) -> Any:
    """Whatever reached this process's stdout and stderr holds no secret either."""
    _ISSUED.clear()
    yield
    out, err = capfd.readouterr()
    assert_no_secrets({"stdout": out, "stderr": err}, [*fixed_secrets(), *_ISSUED])


def output_blobs(tmp_path: Path, log_file: Path) -> dict[str, bytes | str]:
    """The log file and every ``pmp.db*`` file (database, WAL, shared memory) of a test."""
    blobs: dict[str, bytes | str] = {"log file": log_file.read_bytes() if log_file.exists() else b""}
    for path in tmp_path.iterdir():
        if path.name.startswith("pmp.db"):
            blobs[path.name] = path.read_bytes()
    return blobs


def assert_clean_outputs(sim: Simulator, tmp_path: Path, log_file: Path, *texts: str,
                         personal: Sequence[str] = ()) -> None:
    """No client secret, refresh token, API key or issued access token (nor any of
    ``personal``) in the log, the database files or any captured text."""
    _ISSUED.extend(sim.issued_tokens)
    blobs = output_blobs(tmp_path, log_file)
    for k, text in enumerate(texts):
        blobs[f"text {k}"] = text
    assert_no_secrets(blobs, [*fixed_secrets(), *sim.issued_tokens])
    if personal:
        assert_no_secrets(blobs, list(personal))
