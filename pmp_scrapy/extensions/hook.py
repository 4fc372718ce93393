"""PostExtractionHook: runs ``POST_EXTRACTION_HOOK`` after a run that committed data.

The command runs through ``/bin/sh -c`` (pipelines and redirections work), in the crawl's
working directory, with the run summary as JSON on stdin (the same summary the run records:
``exit_code``, ``pages_committed``, ``mappings_upserted``, ``coverage``, ``coverage_pct``,
``snapshot_id`` …) and ``PMP_EXIT_CODE`` in its environment. Secrets (``PMP_CLIENT_SECRET``,
``PMP_REFRESH_TOKEN``, ``PMP_CLIENT_ID``, ``PMP_API_KEY``, ``SLACK_WEBHOOK_URL``) and the path of
the credentials file (``PMP_CREDENTIALS_FILE``) are removed from its environment;
``PMP_DATABASE_URL`` is kept without its password (a hook connects with ``PGPASSFILE`` /
``~/.pgpass``, or ``PGPASSWORD`` if the operator gives it one). It is skipped when the run
committed nothing (no page, no healed gap, no mapping), e.g. when the target was already met or
the run failed before its first commit.

It runs without blocking the reactor (an asyncio subprocess) and is killed, with its process
group, after ``PMP_HOOK_TIMEOUT`` seconds, or at once when a second SIGTERM/SIGINT hurries the
stop (:mod:`pmp_scrapy.extensions.shutdown`). A failure, a non-zero exit or a timeout is logged
(``hook_failed``) and never changes the run's exit code.

Reads ``POST_EXTRACTION_HOOK``, ``PMP_HOOK_TIMEOUT``. Listens to ``run_finished``, whose handler
returns when the hook has finished (the checkpoint extension awaits it, so the process does not
exit under the hook). Writes stats ``pmp/hook_exit_code``, ``pmp/hook_failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured

from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.config import get_config
from pmp_scrapy.credentials import OAUTH_NAMES
from pmp_scrapy.extensions.shutdown import stop_state
from pmp_scrapy.redaction import response_sample
from pmp_scrapy.storage.engine import url_without_password

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

HIDDEN_ENV = (*OAUTH_NAMES, "PMP_API_KEY", "SLACK_WEBHOOK_URL")  # secrets by name
HIDDEN_PATHS = ("PMP_CREDENTIALS_FILE",)  # not a secret, but where the secrets are
OUTPUT_SAMPLE = 500  # bytes of the hook's output kept in the log


def hook_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The hook's environment: ours without secrets, and the database URL without its password."""
    env = {k: v for k, v in environ.items() if k not in HIDDEN_ENV and k not in HIDDEN_PATHS}
    if env.get("PMP_DATABASE_URL"):
        bare = url_without_password(env["PMP_DATABASE_URL"])
        if bare is None:
            del env["PMP_DATABASE_URL"]  # unreadable: it might hold the password anywhere
        else:
            env["PMP_DATABASE_URL"] = bare
    return env


def committed_data(summary: dict[str, Any]) -> bool:
    """Whether the run committed anything the hook could analyse."""
    return any(int(summary.get(key) or 0) > 0 for key in ("pages_committed", "gaps_resolved", "mappings_upserted"))


class PostExtractionHook:
    """See the module docstring."""

    def __init__(self, crawler: Crawler, command: str, timeout: float) -> None:
        self.crawler = crawler
        self.command = command
        self.timeout = timeout

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        config = get_config(crawler)
        if not config.post_extraction_hook:
            raise NotConfigured
        extension = cls(crawler, config.post_extraction_hook, config.hook_timeout)
        crawler.signals.connect(extension.run_finished, signal=pmp_signals.run_finished)
        return extension

    async def run_finished(self, summary: dict[str, Any]) -> None:
        """Run the hook if the run committed data; return when it has finished."""
        if not committed_data(summary):
            logger.info("post-extraction hook skipped: the run committed no data",
                        extra={"event_type": "hook_skipped"})
            return
        await self.run(summary)

    async def run(self, summary: dict[str, Any]) -> None:
        """Run the command with ``summary`` on stdin; log, never raise."""
        env = hook_environment(os.environ)
        env["PMP_EXIT_CODE"] = str(summary.get("exit_code", ""))
        started = time.monotonic()
        stats = self.crawler.stats
        logger.info("running the post-extraction hook", extra={"event_type": "hook_started"})
        try:
            process = await asyncio.create_subprocess_shell(
                self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            stats.set_value("pmp/hook_failed", True)
            logger.warning("post-extraction hook could not start: %s", exc.strerror or type(exc).__name__,
                           extra={"event_type": "hook_failed", "reason": "start_failed"})
            return
        payload = json.dumps(summary, default=str).encode("utf-8")
        talk = asyncio.ensure_future(process.communicate(payload))
        hurry = asyncio.ensure_future(stop_state(self.crawler).hurry.wait())
        try:
            await asyncio.wait((talk, hurry), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if not talk.done():
            self._kill(process)
            await process.wait()
            talk.cancel()
            stats.set_value("pmp/hook_failed", True)
            hurried = stop_state(self.crawler).hurry.is_set()
            logger.warning("post-extraction hook %s", "killed: a second signal hurried the stop" if hurried
                           else f"killed after {self.timeout:.0f} s (PMP_HOOK_TIMEOUT)",
                           extra={"event_type": "hook_failed", "reason": "stopped" if hurried else "timeout",
                                  "timeout_s": self.timeout})
            return
        out, err = talk.result()
        elapsed = round(time.monotonic() - started, 2)
        stats.set_value("pmp/hook_exit_code", process.returncode)
        fields = {"exit_code": process.returncode, "duration_s": elapsed,
                  "stdout_sample": response_sample(out, OUTPUT_SAMPLE),
                  "stderr_sample": response_sample(err, OUTPUT_SAMPLE)}
        if process.returncode == 0:
            logger.info("post-extraction hook finished in %.1f s", elapsed,
                        extra={"event_type": "hook_finished", **fields})
        else:
            stats.set_value("pmp/hook_failed", True)
            logger.warning("post-extraction hook exited %s after %.1f s", process.returncode, elapsed,
                           extra={"event_type": "hook_failed", "reason": "exit_status", **fields})

    @staticmethod
    def _kill(process: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the shell and whatever it started
        except (ProcessLookupError, PermissionError):
            pass
