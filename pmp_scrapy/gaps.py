"""Which gap ``error_type`` (contract) a final HTTP status or a failed download is (pure)."""

from __future__ import annotations

from scrapy.exceptions import DownloadTimeoutError
from twisted.internet.error import TCPTimedOutError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.python.failure import Failure


def gap_type_for_status(status: int) -> str:
    """The contract's gap ``error_type`` for a final HTTP status."""
    if status == 429:
        return "429_rate_limit"
    if 500 <= status <= 599:
        return "5xx_server_error"
    return "unexpected_status"


def gap_type_for_failure(failure: Failure) -> str:
    """``network_timeout`` or ``network_error`` for a download that raised."""
    if failure.check(DownloadTimeoutError, TwistedTimeoutError, TCPTimedOutError, TimeoutError):
        return "network_timeout"
    return "network_error"
