"""ApiKeyMiddleware: on-premises PMP (``PMP_AUTH=apikey``) takes the API key as the bare
``Authorization`` header; a 401 means the key is wrong and ends the run (exit 1).

Reads ``PMP_AUTH`` and the ``PMP_API_KEY`` secret (:mod:`pmp_scrapy.credentials`). Off
(``NotConfigured``) for OAuth. Writes stats ``pmp/unauthorized``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest, NotConfigured

from pmp_scrapy.config import get_config
from pmp_scrapy.credentials import require_secrets
from pmp_scrapy.logformat import register_secret
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.runstop import stop_run

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class ApiKeyMiddleware:
    """See the module docstring."""

    def __init__(self, crawler: Crawler, api_key: str) -> None:
        self.crawler = crawler
        self._api_key = api_key
        self._stopped = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if get_config(crawler).auth != "apikey":
            raise NotConfigured  # silent: PMP_AUTH is oauth, TokenMiddleware authenticates
        api_key = require_secrets(("PMP_API_KEY",), crawler.settings)["PMP_API_KEY"]
        register_secret(api_key)
        return cls(crawler, api_key)

    def process_request(self, request: Request) -> None:
        if request.meta.get(SIDE_REQUEST):
            return
        if self._stopped:
            raise IgnoreRequest("the run is stopping: the API key was refused")
        request.headers["Authorization"] = self._api_key

    def process_response(self, request: Request, response: Response) -> Response:
        if request.meta.get(SIDE_REQUEST) or response.status != 401:
            return response
        self.crawler.stats.inc_value("pmp/unauthorized")
        if not self._stopped:
            self._stopped = True
            stop_run(self.crawler, "pmp_auth_failed",
                     "the PMP server refused the API key (HTTP 401): check PMP_API_KEY")
        raise IgnoreRequest("API key refused")
