"""What a person at a terminal sees (issue 14): the demo in a real terminal (tmux), read back with
``tmux capture-pane``: the progress bar and the final summary, no Scrapy start-up lines, no
stats dump, nothing wider than 80 columns."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import scrapy_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


def run_in_tmux(command: str, cwd: Path, *, timeout: float = 120) -> str:
    """Run ``command`` in a detached 80x50 tmux session; the screen (joined lines) when it ends."""
    session = f"pmp-test-{time.monotonic_ns()}"
    env = scrapy_env()
    exports = " ".join(f"{k}='{v}'" for k, v in env.items() if k in ("PYTHONPATH", "SCRAPY_SETTINGS_MODULE",
                                                                     "PYTHON_KEYRING_BACKEND", "PATH", "HOME"))
    marker = cwd / "done"
    script = f"cd '{cwd}' && env {exports} {command}; echo \"EXIT=$?\"; touch '{marker}'; sleep 600"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "50", script], check=True)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", session], check=True,
                              capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def test_demo_on_a_terminal_shows_the_bar_and_a_short_summary(tmp_path: Path) -> None:
    import sys

    screen = run_in_tmux(f"{sys.executable} -m scrapy crawl dcapi_patches -a demo=1 -s DOWNLOAD_DELAY=0", tmp_path)
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert "EXIT=0" in lines, screen
    assert any(line.startswith("pages ") and "107/107" in line for line in lines), screen  # the bar
    assert "pmp_scrapy: exit 0 (done)" in lines
    assert any(line.strip().startswith("coverage") and "3,210 of 3,317" in line for line in lines)
    assert any(line.strip().startswith("next") and "scrapy status" in line for line in lines)
    for noise in ("Scrapy 2.", "Enabled extensions", "Overridden settings", "Dumping Scrapy stats",
                  "Spider opened", "Telnet", "Versions:"):
        assert noise not in screen, noise
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert len(lines) < 25  # was about 242 lines before
