"""POST_EXTRACTION_HOOK: run after a run that committed data, summary JSON on stdin, timeout,
failure logged and never fatal."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from conftest import THREE_PAGES, CrawlAgainst, SlackReceiver, oauth_env

from pmp_scrapy.extensions.hook import HIDDEN_ENV, committed_data
from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario, Simulator

pytestmark = pytest.mark.crawl_defaults(PMP_CHECKPOINT_EVERY=2)


def recorder(out: Path) -> str:
    """A hook command that stores its stdin and part of its environment in ``out``."""
    code = ("import json, os, sys; summary = json.load(sys.stdin); "
            f"open({str(out)!r}, 'w').write(json.dumps({{'summary': summary, "
            "'secret_env': [k for k in os.environ if k in ('PMP_CLIENT_SECRET', 'PMP_REFRESH_TOKEN', "
            "'SLACK_WEBHOOK_URL', 'PMP_CLIENT_ID', 'PMP_API_KEY')], 'exit_env': os.environ.get('PMP_EXIT_CODE')}))")
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event_type", None) == name]


def test_committed_data() -> None:
    assert committed_data({"pages_committed": 1})
    assert committed_data({"pages_committed": 0, "gaps_resolved": 2})
    assert not committed_data({"pages_committed": 0, "gaps_resolved": 0, "mappings_upserted": 0})


@pytest_twisted.ensureDeferred
async def test_hook_gets_the_summary_then_is_skipped_when_nothing_was_committed(
        tmp_path: Path, crawl_against: CrawlAgainst, caplog: pytest.LogCaptureFixture, slack: SlackReceiver) -> None:
    out = tmp_path / "hook.json"
    with Simulator(scenario=Scenario(dataset=THREE_PAGES)) as sim:
        # Every secret the hook must not see is in the crawl's environment: the OAuth credentials,
        # an API key and a working Slack webhook.
        secrets = {**oauth_env(sim), "PMP_API_KEY": DEMO_CREDENTIALS["api_key"], "SLACK_WEBHOOK_URL": slack.url}
        assert set(secrets) == set(HIDDEN_ENV)
        result = await crawl_against(sim, env=secrets, POST_EXTRACTION_HOOK=recorder(out), PMP_SLACK_MIN_INTERVAL=0)
        assert all(os.environ[name] == value for name, value in secrets.items())  # set while the hook ran
        assert slack.posts and result.stats["pmp/slack/sent"] == len(slack.posts)  # Slack really was on
        assert result.exit_code == 0 and result.stats["pmp/hook_exit_code"] == 0
        got = json.loads(out.read_text())
        out.unlink()
        assert got["summary"]["pages_committed"] == 3 and got["summary"]["exit_code"] == 0
        assert got["summary"]["mappings_upserted"] == result.stats["pmp/mappings_upserted"]
        assert got["summary"]["coverage"] == 90 and got["summary"]["target_met"] is True
        assert got["secret_env"] == [] and got["exit_env"] == "0"
        assert events(caplog, "hook_finished")

        posted = len(slack.posts)
        again = await crawl_against(sim, env=secrets, POST_EXTRACTION_HOOK=recorder(out), PMP_SLACK_MIN_INTERVAL=0)
    assert again.close_reason == "pmp_target_met" and again.exit_code == 0
    assert len(slack.posts) == posted  # nothing to do: Slack says nothing either
    assert not out.exists()
    assert events(caplog, "hook_skipped")


@pytest_twisted.ensureDeferred
async def test_failing_hook_is_logged_never_fatal(crawl_against: CrawlAgainst,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    command = f"{shlex.quote(sys.executable)} -c \"import sys; print('oops admin@example.com', file=sys.stderr); sys.exit(3)\""
    with Simulator(scenario=Scenario(dataset=THREE_PAGES)) as sim:
        result = await crawl_against(sim, POST_EXTRACTION_HOOK=command)
    assert result.exit_code == 0 and result.stats["pmp/hook_failed"] is True
    [failed] = events(caplog, "hook_failed")
    assert failed.levelno == logging.WARNING and failed.exit_code == 3
    assert failed.stderr_sample.startswith("oops [email]")


@pytest_twisted.ensureDeferred
async def test_hook_is_killed_at_its_timeout(tmp_path: Path, crawl_against: CrawlAgainst,
                                             caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "late"
    command = f"sleep 30; touch {shlex.quote(str(marker))}"
    with Simulator(scenario=Scenario(dataset=THREE_PAGES)) as sim:
        started = time.monotonic()
        result = await crawl_against(sim, POST_EXTRACTION_HOOK=command, PMP_HOOK_TIMEOUT=0.5)
        elapsed = time.monotonic() - started
    assert result.exit_code == 0 and elapsed < 10
    [failed] = events(caplog, "hook_failed")
    assert failed.reason == "timeout"
    assert not marker.exists()


@pytest_twisted.ensureDeferred
async def test_unstartable_hook_is_a_warning(crawl_against: CrawlAgainst, caplog: pytest.LogCaptureFixture) -> None:
    with Simulator(scenario=Scenario(dataset=THREE_PAGES)) as sim:
        result = await crawl_against(sim, POST_EXTRACTION_HOOK="/nonexistent/hook --x")
    assert result.exit_code == 0
    [failed] = events(caplog, "hook_failed")
    assert failed.exit_code == 127  # the shell could not find it
