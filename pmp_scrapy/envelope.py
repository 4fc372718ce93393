"""Reads a DCAPI page body into an :class:`Envelope`, or says exactly why it cannot.

The envelope is checked against the request: ``metadata.page`` (when present) must be the page
asked for; ``totalPages`` and ``totalRecords`` must be whole, non-negative counts below sane
maxima (:data:`MAX_TOTAL_PAGES`, :data:`MAX_TOTAL_RECORDS`) and agree with the page size
(``totalPages == ceil(totalRecords / pageLimit)``; 0 or 1 for an empty tenant). Any violation,
and anything else that goes wrong while reading the body (JSON nested too deeply, a number too
long to convert), is a :class:`PayloadError` naming the field, so the page becomes a gap; no
other exception leaves :func:`parse_envelope`. Reads only the body; no HTTP, no SQL.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pmp_scrapy.envelope_stream import STREAM_ABOVE, LazySystems, load_big
from pmp_scrapy.values_guard import describe_value, one_line

#: Pages a sweep may have: 3 million systems at 30 a page. A larger count is a broken answer,
#: and a gap, not that many requests.
MAX_TOTAL_PAGES = 100_000
#: Systems a tenant may have: well inside PostgreSQL's INTEGER (2**31 - 1), where it is stored.
MAX_TOTAL_RECORDS = 100_000_000

_DIGITS = re.compile(r"\s*-?\d{1,19}\s*")


class PayloadError(Exception):
    """A page body that is not a usable DCAPI envelope; ``error_type`` is the gap's type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class Envelope:
    """The parts of a DCAPI page the extractor uses."""

    page: int | None
    total_pages: int
    total_records: int
    systems: list[dict[str, Any]] | LazySystems  # lazy for a body past STREAM_ABOVE bytes


def _count(metadata: dict[str, Any], key: str, maximum: int) -> int:
    """``metadata[key]`` as a whole number in [0, ``maximum``] (a number, or its digits as a
    string), else a :class:`PayloadError` naming the field and what it holds."""
    value = metadata.get(key)
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)  # the server sends numbers, sometimes as strings
    if number is None:
        raise PayloadError("invalid_payload", f"metadata.{key} is {describe_value(value)}, not a count")
    if number < 0:
        raise PayloadError("invalid_payload", f"metadata.{key} is negative ({number})")
    if number > maximum:
        raise PayloadError("invalid_payload", f"metadata.{key} is {describe_value(number)}, above the "
                                              f"sane maximum of {maximum}")
    return number


def _load(body: bytes) -> Any:
    """The body's JSON, or a :class:`PayloadError`: ``json_parse_error`` when it is not JSON,
    ``invalid_payload`` when it is JSON Python cannot hold (too deep, too long a number)."""
    if not body or not body.strip():
        raise PayloadError("json_parse_error", "empty response body")
    try:
        return load_big(body) if len(body) > STREAM_ABOVE else json.loads(body)
    except RecursionError:
        raise PayloadError("invalid_payload", "the JSON is nested too deeply to read (RecursionError)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        what = "an HTML page" if body.lstrip()[:1] == b"<" else "malformed JSON"
        raise PayloadError("json_parse_error", one_line(
            f"response is {what}, not JSON ({exc.__class__.__name__}: {str(exc)[:120]})")) from None
    except ValueError as exc:  # valid JSON Python refuses: an integer of more than 4300 digits
        raise PayloadError("invalid_payload", one_line(f"the JSON holds a value that cannot be read ({exc})",
                                                       limit=160)) from None


def _check_paging(metadata: dict[str, Any], page: int | None, page_limit: int | None) -> tuple[int | None, int, int]:
    """``(page, totalPages, totalRecords)`` of ``metadata``, checked against the request."""
    total_pages = _count(metadata, "totalPages", MAX_TOTAL_PAGES)
    total_records = _count(metadata, "totalRecords", MAX_TOTAL_RECORDS)
    answered = _count(metadata, "page", MAX_TOTAL_PAGES) if metadata.get("page") is not None else None
    if page is not None and answered is not None and answered != page:
        raise PayloadError("invalid_payload", f"metadata.page is {answered}, not the page {page} asked for")
    # The server's page size when it says (it may cap what was asked), else the one asked for.
    limit = _count(metadata, "pageLimit", MAX_TOTAL_RECORDS) if metadata.get("pageLimit") is not None else page_limit
    if limit == 0:
        raise PayloadError("invalid_payload", "metadata.pageLimit is 0")
    if total_records == 0:
        if total_pages > 1:
            raise PayloadError("invalid_payload", f"metadata.totalPages is {total_pages} for 0 records")
    elif limit is not None and total_pages != -(-total_records // limit):
        raise PayloadError("invalid_payload", f"metadata.totalPages is {total_pages}, but {total_records} records "
                                              f"at {limit} a page make {-(-total_records // limit)}")
    return (answered if answered is not None else page), total_pages, total_records


def parse_envelope(body: bytes, page: int | None = None, page_limit: int | None = None) -> Envelope:
    """Parse a page body (JSON even when labelled text/plain), checked against the ``page`` and
    ``page_limit`` asked for when they are given."""
    data = _load(body)
    if not isinstance(data, dict):
        raise PayloadError("invalid_payload", f"top level is a JSON {type(data).__name__}, not an object")
    code = data.get("response_code")
    if code is not None and not (isinstance(code, (int, str)) and str(code) == "200"):
        raise PayloadError("invalid_payload", f"response_code is {describe_value(code)}")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise PayloadError("invalid_payload", "no metadata object in the envelope")
    response = data.get("message_response")
    if not isinstance(response, dict):
        raise PayloadError("invalid_payload", "no message_response object in the envelope")
    systems = response.get("systemreport")
    if not isinstance(systems, (list, LazySystems)):
        raise PayloadError("invalid_payload", f"message_response.systemreport is {type(systems).__name__}, not a list")
    for index, system in enumerate(systems if isinstance(systems, list) else ()):  # LazySystems: objects only
        if not isinstance(system, dict):
            raise PayloadError("invalid_payload", f"systemreport[{index}] is not an object")
    answered, total_pages, total_records = _check_paging(metadata, page, page_limit)
    return Envelope(answered, total_pages, total_records, systems)
