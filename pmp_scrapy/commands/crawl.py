"""``scrapy crawl``, replaced: validates the configuration first (a bad setting is one line and
exit code 1, never a traceback), runs the crawl, prints a one-line result, and exits with the
code the checkpoint extension decided (the run record's outcome): 0 done, 1 fatal, 2 partial.

``-a customer=all`` or a comma-separated list (also ``PMP_CUSTOMER``) sweeps several MSP customers
in this one process (:class:`pmp_scrapy.msp.CustomerSweep`: the server's customer list first, then
one crawler per customer in turn, one token and one rate): one result line per customer, then
the job's, whose exit code is the worst of the customers' (1 over 2 over 0). A name the server
does not list is a one-line configuration error, exit 1, before any sweep."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from pmp_scrapy.config import apply_environment, apply_spider_arguments, get_config, load_config
from pmp_scrapy.errors import ConfigError

# The crawl's own modules (credentials, customers, run record, storage with SQLAlchemy, summary)
# are imported where used: Scrapy imports every command module for any command, and
# `scrapy status`, `report` or `version` must not pay for them.
if TYPE_CHECKING:
    import argparse

    from scrapy.crawler import Crawler
    from scrapy.settings import Settings

    from pmp_scrapy.config import PMPConfig
    from pmp_scrapy.customers import CustomerSelection
    from pmp_scrapy.run import RunRecord


def fail(message: str) -> None:
    """Print the project's one-line error to stderr."""
    print(f"pmp_scrapy: error: {message}", file=sys.stderr, flush=True)


class Command(ScrapyCrawlCommand):
    """Run a spider; exit 0 (done), 1 (fatal) or 2 (partial)."""

    def short_desc(self) -> str:
        return "Run a spider (dcapi_patches); exit 0 done, 1 fatal, 2 partial"

    def _preflight(self, spname: str, spargs: dict[str, str]) -> None:
        if spname != "dcapi_patches":
            return
        from pmp_scrapy.credentials import OAUTH_NAMES, check_credentials_file, require_secrets

        settings = self._settings_for(spargs)
        config = load_config(settings)
        check_credentials_file(settings)
        if config.demo:
            return
        if config.auth == "apikey":
            require_secrets(("PMP_API_KEY",), settings)
        else:
            require_secrets(OAUTH_NAMES, settings)

    def _settings_for(self, spargs: dict[str, str], *, validate: bool = True) -> Settings:
        """A copy of the settings as the crawl will see them (environment and spider arguments)."""
        assert self.settings is not None
        settings = self.settings.copy()
        apply_environment(settings)
        try:
            apply_spider_arguments(settings, spargs)
        except ConfigError:
            if validate:
                raise
        return settings

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give exactly one spider name, e.g. scrapy crawl dcapi_patches")
        spname = args[0]
        from pmp_scrapy.config_errors import record_config_error
        from pmp_scrapy.extensions.shutdown import settle_signals

        try:
            selection = self._selection(spname, opts.spargs)
            self._preflight(spname, self._one_customer_arguments(opts.spargs, selection))
        except ConfigError as exc:
            fail(str(exc))
            record_config_error(self._settings_for(opts.spargs, validate=False), str(exc))
            self.exitcode = 1
            return
        assert self.crawler_process
        if selection is not None:
            self.exitcode = self._sweep_customers(spname, opts.spargs, selection)
        else:
            crawler = self._create_crawler(spname)
            self.crawler_process.crawl(crawler, **opts.spargs)
            self.crawler_process.start()
            self.exitcode = self._exit_code(crawler)
        settle_signals(self.exitcode)

    # --- several customers (-a customer=all or a list) ------------------------------------------------
    def _selection(self, spname: str, spargs: dict[str, str]) -> CustomerSelection | None:
        """The customers ``customer=`` (else ``PMP_CUSTOMER``) names when it names several."""
        if spname != "dcapi_patches":
            return None
        from pmp_scrapy.customers import parse_selection

        value = spargs["customer"] if "customer" in spargs else self._settings_for({}).get("PMP_CUSTOMER")
        return parse_selection(value)

    @staticmethod
    def _one_customer_arguments(spargs: dict[str, str], selection: CustomerSelection | None) -> dict[str, str]:
        if selection is None:
            return spargs
        return {name: value for name, value in spargs.items() if name != "customer"}

    def _sweep_customers(self, spname: str, spargs: dict[str, str], selection: CustomerSelection) -> int:
        from pmp_scrapy.config_errors import record_config_error
        from pmp_scrapy.customers import job_message, worst_exit_code
        from pmp_scrapy.msp import CustomerSweep
        from pmp_scrapy.storage.engine import safe_url
        from pmp_scrapy.summary import customers_summary

        assert self.crawler_process is not None
        sweep = CustomerSweep(self.crawler_process, spname, self._one_customer_arguments(spargs, selection),
                              selection)
        sweep.run()
        discovery = sweep.discovery
        if sweep.config_error is not None:
            fail(sweep.config_error)
            record_config_error(self._settings_for(self._one_customer_arguments(spargs, selection), validate=False),
                                sweep.config_error)
            return 1
        if discovery.skipped is not None:
            print(f"pmp_scrapy: exit 0: {discovery.skipped}", flush=True)
            return 0
        problem = discovery.error or sweep.failure
        if problem is not None:
            print(f"pmp_scrapy: exit 1: {problem}", file=sys.stderr, flush=True)
            return 1
        results = sweep.results()
        code = worst_exit_code(result.exit_code for result in results)
        stream = sys.stdout if code == 0 else sys.stderr
        if stream.isatty() and sweep.config is not None:
            config = sweep.config  # as the crawls saw it (a demo's database too)
            print(customers_summary(exit_code=code, message=job_message(results), results=results,
                                    database=safe_url(config.database_url),
                                    status_command=self._status_command(config)), file=stream, flush=True)
        else:
            for result in results:
                print(f"pmp_scrapy: customer {result.customer}: exit {result.exit_code}: {result.message}",
                      file=stream)
            print(f"pmp_scrapy: exit {code}: {job_message(results)}", file=stream, flush=True)
        return code

    @staticmethod
    def _status_command(config: PMPConfig, customer: str | None = None) -> str:
        from pmp_scrapy.storage.engine import safe_url

        database = safe_url(config.database_url)
        status = "scrapy status" + (f" -s PMP_DATABASE_URL={database}" if config.demo else "")
        return status + (f" --customer {customer}" if customer else "")

    # --- one customer (or none) --------------------------------------------------------------------------
    def _exit_code(self, crawler: Crawler) -> int:
        if self.crawler_process is not None and self.crawler_process.bootstrap_failed:
            fail("the crawl could not start (see the log above)")
            return 1
        from pmp_scrapy.run import find_run

        run = find_run(crawler)
        if run is None or run.outcome is None:
            fail("the run ended without a result (see the log)")
            return 1
        code, message = run.outcome.exit_code, run.outcome.message
        stream = sys.stdout if code == 0 else sys.stderr
        if stream.isatty():
            print(self._terminal_summary(crawler, run), file=stream, flush=True)
        else:
            print(f"pmp_scrapy: exit {code}: {message}", file=stream, flush=True)
        return code

    @staticmethod
    def _terminal_summary(crawler: Crawler, run: RunRecord) -> str:
        from pmp_scrapy.storage.engine import safe_url
        from pmp_scrapy.summary import terminal_summary

        assert run.outcome is not None
        config = get_config(crawler)
        database = safe_url(config.database_url)
        status = Command._status_command(config, config.customer)
        return terminal_summary(
            exit_code=run.outcome.exit_code, message=run.outcome.message, pages_committed=run.pages_committed,
            gaps_opened=run.gaps_opened, gaps_resolved=run.gaps_resolved, mappings=run.mappings_upserted,
            coverage=run.coverage, total=run.denominator(), target_met=run.target_met(), database=database,
            status_command=status)
