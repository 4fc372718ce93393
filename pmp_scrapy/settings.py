"""Scrapy settings for pmp_scrapy. Defaults only: the environment is folded in by
``config.EnvironmentAddon`` and everything ``PMP_*`` is validated by ``config.load_config``.
Secrets (client secret, refresh token, API key, Slack webhook) never live here."""

from scrapy.settings import default_settings as _scrapy_defaults

from pmp_scrapy import config as _config
from pmp_scrapy import footprint as _footprint

# The one piece of logic here: Scrapy imports this module before it walks its commands (which
# imports itemadapter, and with it pydantic) and before anything is downloaded, and only a
# Scrapy process of this project imports it. See pmp_scrapy.footprint (spec NFR-1).
_footprint.apply()

BOT_NAME = "pmp_scrapy"
SPIDER_MODULES = ["pmp_scrapy.spiders"]
NEWSPIDER_MODULE = "pmp_scrapy.spiders"
COMMANDS_MODULE = "pmp_scrapy.commands"

ADDONS = {
    "pmp_scrapy.config.EnvironmentAddon": 0,
    "pmp_scrapy.demo.DemoAddon": 5,  # after the environment: a demo overrides PMP_BASE_URL and friends
    "pmp_scrapy.logformat.LoggingAddon": 10,  # after the environment: LOG_FILE may come from it
}

# --- the project's settings: defaults from the one table in pmp_scrapy.config ----------------
globals().update(_config.project_defaults())

# --- politeness and resilience ---------------------------------------------------------------
ROBOTSTXT_OBEY = False  # an authenticated JSON API, not a web site
DOWNLOAD_DELAY_JITTER = 0  # exact spacing: the contract promises at most 4 requests a second
# The pace: the Pacer extension keeps DOWNLOAD_DELAY's rate busy at any latency (requests in
# flight ~ latency x rate, up to PMP_MAX_IN_FLIGHT, on the PMP slot) with a margin that never
# lets 5 requests land in one second, and backs off when PMP is overloaded. AutoThrottle would
# stretch the delay to latency / 2 when PMP is merely slow, so it is off. The Pacer admits the
# in-flight target plus room for a request sleeping out a retry backoff, the token call and
# Slack into the downloader (requests get their token when they enter it). Unpaced runs (DOWNLOAD_DELAY=0) keep two downloads: memory (spec NFR-1, peak RSS
# under 100 MB); Scrapy stops downloading while the pages waiting for the database exceed
# SCRAPER_SLOT_MAX_ACTIVE_SIZE bytes (about one page of the simulator).
CONCURRENT_REQUESTS = 3  # unpaced runs; the Pacer raises the downloader's admission as latency needs
CONCURRENT_REQUESTS_PER_DOMAIN = 2
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 500_000
DOWNLOAD_TIMEOUT = 60
AUTOTHROTTLE_ENABLED = False
# Twisted's HTTP pool re-sends a request silently when a kept-alive connection was closed under
# it, unseen by DOWNLOAD_DELAY and the retry policy: this handler turns that off.
DOWNLOAD_HANDLERS = {"http": "pmp_scrapy.http.NoSilentRetryDownloadHandler",
                     "https": "pmp_scrapy.http.NoSilentRetryDownloadHandler"}
RETRY_ENABLED = True
RETRY_HTTP_CODES = [429, *range(500, 600)]  # every 5xx; RETRY_TIMES comes from PMP_MAX_ATTEMPTS
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False  # an in-process code execution port; it could read tokens from memory
USER_AGENT = "pmp_scrapy/1.0 (ManageEngine Patch Manager Plus patch inventory extractor)"
HTTPERROR_ALLOW_ALL = False

DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "pmp_scrapy.middlewares.retry.BackoffRetryMiddleware": 550,
    "pmp_scrapy.middlewares.auth.TokenMiddleware": 590,  # PMP_AUTH=oauth
    "pmp_scrapy.middlewares.apikey.ApiKeyMiddleware": 591,  # PMP_AUTH=apikey
}

ITEM_PIPELINES = {
    "pmp_scrapy.pipelines.MappingPipeline": 300,
}

# Scrapy imports every *_BASE component to normalise its key, even a disabled one: drop those
# we never use from the bases, so their imports (aiohttp, tldextract + requests, twisted.conch:
# ~14 MB of RSS) do not count against the 100 MB budget of spec NFR-1.
EXTENSIONS_BASE = {key: value for key, value in _scrapy_defaults.EXTENSIONS_BASE.items()
                   if not key.endswith(("RemoteControl", "TelnetConsole"))}
DOWNLOADER_MIDDLEWARES_BASE = {key: value for key, value in _scrapy_defaults.DOWNLOADER_MIDDLEWARES_BASE.items()
                               if not key.endswith("CookiesMiddleware")}  # COOKIES_ENABLED = False

EXTENSIONS = {
    "scrapy.extensions.telnet.TelnetConsole": None,
    "pmp_scrapy.extensions.pacer.Pacer": 50,
    "pmp_scrapy.extensions.checkpoint.Checkpoints": 100,
    "pmp_scrapy.extensions.shutdown.PromptStop": 150,  # waits end at a stop; a second signal still records
    "pmp_scrapy.extensions.hook.PostExtractionHook": 200,
    "pmp_scrapy.extensions.slack.SlackNotifier": 300,
    "pmp_scrapy.extensions.progress.ProgressBar": 400,
}

LOG_FORMATTER = "pmp_scrapy.logformat.PMPLogFormatter"
LOG_LEVEL = "INFO"
# Scrapy's own root handler is replaced by logformat.LoggingAddon's (JSON or console, mode 0600,
# daily rotation); LOG_FILE, LOG_LEVEL, LOG_ENABLED and LOG_FILE_APPEND keep their meaning.
LOG_INSTALL_ROOT_HANDLER = False

TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
FEED_EXPORT_ENCODING = "utf-8"
