"""Slack notifications against a local webhook receiver (stdlib HTTP server on loopback)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytest_twisted
from conftest import TEN_PAGES, CrawlAgainst, SlackReceiver, json_log_lines, oauth_env

from pmp_scrapy.extensions.slack import webhook_problem
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

pytestmark = pytest.mark.crawl_defaults(PMP_CHECKPOINT_EVERY=2)


def slack_env(sim: Simulator, url: str) -> dict[str, str]:
    return {**oauth_env(sim), "SLACK_WEBHOOK_URL": url}


def warnings_of(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event_type", None) == event]


@pytest.mark.parametrize(("url", "ok"), [
    ("https://hooks.slack.com/services/T0/B0/x", True),
    ("http://127.0.0.1:8080/hook", True),
    ("http://localhost/hook", True),
    ("http://hooks.slack.com/services/T0/B0/x", False),
    ("hooks.slack.com/services/x", False),
    ("https://", False),
    ("ftp://127.0.0.1/x", False),
])
def test_webhook_validation(url: str, ok: bool) -> None:
    assert (webhook_problem(url) is None) is ok


@pytest_twisted.ensureDeferred
async def test_no_slack_call_without_a_webhook(crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        result = await crawl_against(sim)
        served = len(sim.requests)
    assert result.exit_code == 0
    assert result.stats["downloader/request_count"] == served  # every request went to PMP
    assert not any(k.startswith("pmp/slack/") for k in result.stats)


@pytest_twisted.ensureDeferred
async def test_invalid_webhook_disables_slack_with_a_warning(
        crawl_against: CrawlAgainst, caplog: pytest.LogCaptureFixture, slack: SlackReceiver) -> None:
    insecure = slack.url.replace("127.0.0.1", "hooks.example.invalid")
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        result = await crawl_against(sim, env=slack_env(sim, insecure))
        served = len(sim.requests)
    assert result.exit_code == 0
    assert slack.posts == [] and result.stats["downloader/request_count"] == served
    [warning] = warnings_of(caplog, "slack_disabled")
    assert warning.levelno == logging.WARNING and "https" in warning.getMessage()
    assert "hookSecret" not in caplog.text


@pytest_twisted.ensureDeferred
async def test_messages_of_a_run(crawl_against: CrawlAgainst, slack: SlackReceiver) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=4, kind="http_503")])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, env=slack_env(sim, slack.url), PMP_COVERAGE_TARGET=0.85,
                                     PMP_SLACK_MIN_INTERVAL=0)
    assert result.exit_code == 2  # page 4 is a gap, though 270 of 300 meets an 85% target
    text = "\n".join(slack.texts)
    assert text.startswith("🔄 PMP DCAPI extraction started: snapshot")
    for fragment in ("Coverage passed 25%", "Coverage passed 50%", "Coverage passed 75%",
                     "⚠️ Page 4 failed after 3 attempts (HTTP 503, 5xx_server_error)",
                     "🎉 Extraction complete: 270/300 systems (90.0%)", "*PMP DCAPI Extraction Progress*",
                     "• Page: 10/10", "• Systems: 270/300 (90.0%)", "• Errors: 1 (pages 4)"):
        assert fragment in text, fragment
    assert all(p.path == "/services/T0SECRET/B0SECRET/hookSecret0123456789" for p in slack.posts)
    assert result.stats["pmp/slack/sent"] == len(slack.posts)


@pytest_twisted.ensureDeferred
async def test_at_most_one_message_per_interval_coalesced(crawl_against: CrawlAgainst,
                                                          slack: SlackReceiver) -> None:
    interval = 1.0
    with Simulator(scenario=Scenario(dataset=DatasetSpec(managed_systems=300, no_patch_share=0.2))) as sim:
        result = await crawl_against(sim, env=slack_env(sim, slack.url), PMP_SLACK_MIN_INTERVAL=interval)
    assert result.exit_code == 2  # a complete sweep below the target
    gaps = [b.t - a.t for a, b in zip(slack.posts, slack.posts[1:])]
    assert len(slack.posts) >= 2 and all(gap >= interval * 0.95 for gap in gaps), gaps
    text = "\n\n".join(slack.texts)
    assert text.count("🔄") == 1 and "Coverage passed 75%" in text  # nothing lost, only coalesced
    assert "✅ Batch complete:" in slack.texts[-1] and "⚠️ Partial: the sweep is complete" in slack.texts[-1]


@pytest.mark.parametrize("status", [404, 410])
@pytest_twisted.ensureDeferred
async def test_gone_webhook_disables_slack_for_the_run(status: int, crawl_against: CrawlAgainst,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    receiver = SlackReceiver(status=status)
    try:
        with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
            result = await crawl_against(sim, env=slack_env(sim, receiver.url), PMP_SLACK_MIN_INTERVAL=0)
    finally:
        receiver.close()
    assert result.exit_code == 0 and result.stats["pmp/pages_committed"] == 10
    assert len(receiver.posts) == 1 and result.stats["pmp/slack/disabled"] is True
    [warning] = warnings_of(caplog, "slack_failed")
    assert f"HTTP {status}" in warning.getMessage() and warning.levelno == logging.WARNING


@pytest_twisted.ensureDeferred
async def test_failing_or_unreachable_slack_never_stops_extraction(crawl_against: CrawlAgainst,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    failing = SlackReceiver(status=500)
    closed = SlackReceiver()
    closed.close()  # nothing listens on its port any more
    try:
        for receiver in (failing, closed):
            with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
                result = await crawl_against(sim, env=slack_env(sim, receiver.url), PMP_SLACK_MIN_INTERVAL=0,
                                             PMP_RESET=True)
            assert result.exit_code == 0 and result.stats["pmp/pages_committed"] == 10
            assert result.stats["pmp/slack/failed"] >= 2
    finally:
        failing.close()
    assert len(failing.posts) >= 2  # not disabled by a 500
    assert warnings_of(caplog, "slack_failed")
    assert "hookSecret" not in caplog.text


@pytest_twisted.ensureDeferred
async def test_slow_slack_does_not_slow_extraction(crawl_against: CrawlAgainst) -> None:
    receiver = SlackReceiver(delay=2.0)
    try:
        with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
            result = await crawl_against(sim, env=slack_env(sim, receiver.url), PMP_SLACK_MIN_INTERVAL=0)
            pages = [r.t for r in sim.requests if r.kind == "page"]
    finally:
        receiver.close()
    assert result.exit_code == 0 and len(pages) == 10
    first_post = receiver.posts[0].t
    assert max(pages) < first_post + 2.0  # every page was fetched while the first post hung


@pytest_twisted.ensureDeferred
async def test_webhook_url_never_reaches_the_log(crawl_against: CrawlAgainst, log_file: Path,
                                                 slack: SlackReceiver) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        result = await crawl_against(sim, env=slack_env(sim, slack.url), LOG_FILE=log_file, LOG_LEVEL="DEBUG",
                                     PMP_SLACK_MIN_INTERVAL=0)
    assert result.exit_code == 0 and slack.posts
    text = log_file.read_text()
    assert "hookSecret0123456789" not in text and "T0SECRET" not in text
    crawled = [r for r in json_log_lines(log_file)
               if r["message"].startswith("Crawled (200) <POST") and "/oauth/" not in r["message"]]
    assert crawled and all("[secret]" in r["message"] for r in crawled)


class DroppingSlack:
    """A webhook receiver that closes the first connection after reading its request, without
    an answer (as a receiver that closed an idle kept-alive connection looks to the client),
    and answers every later one 200 ``ok``."""

    def __init__(self) -> None:
        import socket
        import threading

        self.posts: list[bytes] = []
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/services/T0/B0/hookSecret0123456789"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                if not self.dropped:
                    self.dropped += 1
                    continue  # closed without a word
                self.posts.append(request)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self._listener.close()


def test_only_a_failure_before_any_answer_is_retried() -> None:
    from scrapy.exceptions import DownloadConnectionRefusedError, DownloadFailedError, DownloadTimeoutError

    from pmp_scrapy.extensions.slack import retry_post

    assert retry_post(DownloadFailedError("connection lost")) and retry_post(DownloadConnectionRefusedError())
    assert not retry_post(DownloadTimeoutError()) and not retry_post(ValueError())


@pytest_twisted.ensureDeferred
async def test_a_post_whose_connection_fails_before_an_answer_is_sent_once_more(
        crawl_against: CrawlAgainst) -> None:
    receiver = DroppingSlack()
    try:
        with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
            result = await crawl_against(sim, env=slack_env(sim, receiver.url), PMP_SLACK_MIN_INTERVAL=0)
    finally:
        receiver.close()
    assert result.exit_code == 0
    assert receiver.dropped == 1 and result.stats["pmp/slack/retried"] == 1
    assert "pmp/slack/failed" not in result.stats
    assert result.stats["pmp/slack/sent"] == len(receiver.posts) >= 2
    assert b"extraction started" in receiver.posts[0]  # the dropped first message, sent again
    assert all(b"\r\nconnection: close\r\n" in post.lower() for post in receiver.posts)
