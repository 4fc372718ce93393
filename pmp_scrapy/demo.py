"""Demo mode's one home: the built-in PMP simulator on an ephemeral loopback port, in this
process, with the run's settings pointed at it.

:class:`DemoAddon` (in ``ADDONS``, before logging and configuration are read) acts only when
``-a demo=1`` (``PMP_DEMO``) is set: it starts the simulator, points ``PMP_BASE_URL`` and
``PMP_ACCOUNTS_URL`` at it with OAuth and the simulator's public demo credentials, writes to
``./pmp_demo.db`` unless ``PMP_DATABASE_URL`` is given on this command line (an exported
production URL is never used by a demo), sweeps the whole tenant in one run unless
``PMP_BATCH_PAGES`` is given, and stops the simulator when the engine stops. Nothing else in
the crawler imports the simulator.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.settings import SETTINGS_PRIORITIES

from pmp_scrapy.config import DEMO_DATABASE_URL, parse_flag

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from pmp_scrapy.simulator import Simulator

logger = logging.getLogger(__name__)


def given_on_command_line(settings: BaseSettings, name: str) -> bool:
    """Whether ``name`` was set for this command (``-s``), not by the environment or a default."""
    return (settings.getpriority(name) or 0) >= SETTINGS_PRIORITIES["cmdline"]


class DemoAddon:
    """See the module docstring."""

    def __init__(self, crawler: Crawler | None = None) -> None:
        self.crawler = crawler
        self.simulator: Simulator | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def update_settings(self, settings: BaseSettings) -> None:
        if not parse_flag("demo", settings.get("PMP_DEMO", False)) or self.simulator is not None:
            return
        from pmp_scrapy.simulator import DEMO_CREDENTIALS, Simulator

        simulator = self.simulator = Simulator().start()
        for name in ("PMP_BASE_URL", "PMP_ACCOUNTS_URL"):
            settings.set(name, simulator.url, priority="cmdline")
        settings.set("PMP_AUTH", "oauth", priority="cmdline")
        # Public demo values the simulator accepts; never a real secret.
        for name, key in (("PMP_CLIENT_ID", "client_id"), ("PMP_CLIENT_SECRET", "client_secret"),
                          ("PMP_REFRESH_TOKEN", "refresh_token")):
            settings.set(name, DEMO_CREDENTIALS[key], priority="cmdline")
        if not given_on_command_line(settings, "PMP_DATABASE_URL"):
            settings.set("PMP_DATABASE_URL", DEMO_DATABASE_URL, priority="cmdline")
        if not given_on_command_line(settings, "PMP_BATCH_PAGES"):
            settings.set("PMP_BATCH_PAGES", 0, priority="cmdline")
        if self.crawler is not None:
            self.crawler.signals.connect(self.stop, signal=signals.engine_stopped)
        logger.info("demo mode: PMP simulator listening on %s", simulator.url,
                    extra={"event_type": "demo_started"})

    def stop(self) -> None:
        """Stop the simulator (at ``engine_stopped``)."""
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None
