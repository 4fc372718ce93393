"""Reads a DCAPI page body into an :class:`Envelope`, or says exactly why it cannot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


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
    systems: list[dict[str, Any]]


def _count(metadata: dict[str, Any], key: str) -> int:
    value = metadata.get(key)
    try:
        number = int(value)  # the server sends numbers, sometimes as strings
    except (TypeError, ValueError):
        raise PayloadError("invalid_payload", f"metadata.{key} is {value!r}, not a count") from None
    if number < 0:
        raise PayloadError("invalid_payload", f"metadata.{key} is negative ({number})")
    return number


def parse_envelope(body: bytes) -> Envelope:
    """Parse a page body (JSON even when labelled text/plain)."""
    if not body or not body.strip():
        raise PayloadError("json_parse_error", "empty response body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        head = body.lstrip()[:1]
        what = "an HTML page" if head == b"<" else "malformed JSON"
        raise PayloadError("json_parse_error", f"response is {what}, not JSON ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise PayloadError("invalid_payload", f"top level is a JSON {type(data).__name__}, not an object")
    code = data.get("response_code")
    if code is not None and str(code) != "200":
        raise PayloadError("invalid_payload", f"response_code is {code!r}")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise PayloadError("invalid_payload", "no metadata object in the envelope")
    response = data.get("message_response")
    if not isinstance(response, dict):
        raise PayloadError("invalid_payload", "no message_response object in the envelope")
    systems = response.get("systemreport")
    if not isinstance(systems, list):
        raise PayloadError("invalid_payload", f"message_response.systemreport is {type(systems).__name__}, not a list")
    for index, system in enumerate(systems):
        if not isinstance(system, dict):
            raise PayloadError("invalid_payload", f"systemreport[{index}] is not an object")
    page = metadata.get("page")
    try:
        page = int(page) if page is not None else None
    except (TypeError, ValueError):
        page = None
    return Envelope(page, _count(metadata, "totalPages"), _count(metadata, "totalRecords"), systems)
