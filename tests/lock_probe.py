"""A settings module and a test extension for a ``customer=all`` job (tests/test_customer_all.py;
``SCRAPY_SETTINGS_MODULE=lock_probe``): the project's settings plus an extension that, as the job sets up
its second customer's crawl (the previous customer's run is over and recorded; the next has not
opened), it runs a second ``scrapy crawl`` of the same tenant and writes that run's exit code and
output to ``$LOCK_PROBE_OUT`` (JSON). Blocking the job's reactor meanwhile is the point: the
moment between two customers stays still while the second run tries the tenant's lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pmp_scrapy.settings import *  # this module is the project's settings, plus the probe
from pmp_scrapy.settings import EXTENSIONS as _PROJECT_EXTENSIONS

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

EXTENSIONS = {**_PROJECT_EXTENSIONS, "lock_probe.SecondRunBetweenCustomers": 990}


class SecondRunBetweenCustomers:
    crawls: ClassVar[int] = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SecondRunBetweenCustomers:
        if crawler.spidercls.name == "dcapi_patches":
            cls.crawls += 1
            if cls.crawls == 2:
                cls.second_run()
        return cls()

    @staticmethod
    def second_run() -> None:
        out = os.environ["LOCK_PROBE_OUT"]
        env = {**{k: v for k, v in os.environ.items() if k != "LOCK_PROBE_OUT"}, "LOG_FILE": f"{out}.log",
               "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings"}
        result = subprocess.run([sys.executable, "-m", "scrapy", "crawl", "dcapi_patches", "-a", "customer=Globex"],
                                env=env, capture_output=True, text=True, timeout=120, check=False)
        Path(out).write_text(json.dumps(
            {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}))
