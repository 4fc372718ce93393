"""A page body far above the usual size, read without holding its parsed form whole.

``json.loads`` of a 30 MB page (30 systems x 5,000 patches) builds some 110 MB of dicts and
strings, all alive until the rows are built from them, on top of the body and the rows. For a
body past :data:`STREAM_ABOVE` bytes, :func:`load_big` parses the envelope itself but leaves
``message_response.systemreport`` as :class:`LazySystems`: where its elements lie, each element
decoded again only when iterated, so one system's parsed form is alive at a time.

A UTF-8 body (what PMP sends) is not decoded whole either: the envelope's structure is read on
its bytes and each value decoded from a window of them just past where it starts (grown until
the value ends inside it), so the 30 MB ``str`` of the body never exists beside the body itself
(Scrapy holds the bytes until the page's item is stored). Anything unusual on the way (a body
that is not valid JSON or UTF-8, too deep, an unreadable number, a ``systemreport`` that is not
an array of objects) makes the body be read again whole, decoded as ``json.loads`` decodes it,
so it fails with the exceptions ``json.loads`` raises, exactly where it would; other encodings
(a byte-order mark, UTF-16/32) are read that way from the start. Every element is decoded once
while its extent is found, so a body that reads without error here is valid JSON. Reads only
the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

#: Bodies above this many bytes are read with :func:`load_big`; the usual page is ~350 KB.
STREAM_ABOVE = 4 << 20

_SPACE = re.compile(r"[ \t\n\r]*")
_SPACE_BYTES = re.compile(rb"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_FIRST_WINDOW = 64 << 10  # bytes decoded at first for a value; doubled until the value ends inside


class LazySystems:
    """A JSON array of objects, its elements decoded one at a time when iterated: ``spans`` are
    ``(start, end)`` of each element in ``source``, the decoded text or the body's UTF-8 bytes."""

    def __init__(self, source: str | bytes, spans: list[tuple[int, int]]) -> None:
        self._source, self._spans = source, spans

    def __len__(self) -> int:
        return len(self._spans)

    def __bool__(self) -> bool:
        return bool(self._spans)

    def _decode(self, span: tuple[int, int]) -> dict[str, Any]:
        source, (start, end) = self._source, span
        if isinstance(source, str):
            return _DECODER.raw_decode(source, start)[0]  # type: ignore[no-any-return]
        return _DECODER.decode(str(memoryview(source)[start:end], "utf-8", "surrogatepass"))  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for span in self._spans:
            yield self._decode(span)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._decode(self._spans[index])


class _Unusual(Exception):
    """The body is not a plain UTF-8 DCAPI envelope: read it whole instead."""


# --- reading the body's bytes (UTF-8) ---------------------------------------------------------

class _Bytes:
    """The body, read at byte offsets: structure on the bytes, values decoded from windows."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.view = memoryview(body)

    def skip(self, at: int) -> int:
        return _SPACE_BYTES.match(self.body, at).end()  # type: ignore[union-attr]  # matches the empty string too

    def char(self, at: int) -> bytes:
        return self.body[at:at + 1]

    def expect(self, at: int, char: bytes) -> int:
        at = self.skip(at)
        if self.body[at:at + 1] != char:
            raise _Unusual
        return at + 1

    def value(self, at: int, window: int = _FIRST_WINDOW) -> tuple[Any, int]:
        """The JSON value whose first byte is at ``at``, and the offset just past it: decoded from
        a window of the bytes that grows until the value ends before the window does (a value
        ending at the window's edge may be cut short: a number, say)."""
        body, size = self.body, len(self.body)
        while True:
            cut = min(at + window, size)
            while cut < size and body[cut] & 0xC0 == 0x80:
                cut -= 1  # not inside a character
            text = str(self.view[at:cut], "utf-8", "surrogatepass")
            try:
                value, end = _DECODER.raw_decode(text)
            except json.JSONDecodeError:
                if cut >= size:
                    raise _Unusual from None
            else:
                if end < len(text) or cut >= size:
                    width = end if text.isascii() else len(text[:end].encode("utf-8", "surrogatepass"))
                    return value, at + width
            window *= 2


def _object_bytes(reader: _Bytes, at: int, lazy_key: str | None) -> tuple[dict[str, Any], int]:
    """:func:`_object` on the body's bytes."""
    result: dict[str, Any] = {}
    at = reader.skip(at + 1)
    if reader.char(at) == b"}":
        return result, at + 1
    while True:
        at = reader.skip(at)
        if reader.char(at) != b'"':
            raise _Unusual
        key, at = reader.value(at)
        start = reader.skip(reader.expect(at, b":"))
        value: Any
        if key == lazy_key and reader.char(start) == b"[":
            value, at = _array_bytes(reader, start)
        elif lazy_key is None and key == "message_response" and reader.char(start) == b"{":
            value, at = _object_bytes(reader, start, "systemreport")
        else:
            value, at = reader.value(start)
        result[key] = value
        at = reader.skip(at)
        if reader.char(at) == b"}":
            return result, at + 1
        at = reader.expect(at, b",")


def _array_bytes(reader: _Bytes, begin: int) -> tuple[LazySystems, int]:
    """The array of objects whose ``[`` is at ``begin`` as LazySystems over the bytes (an element
    that is not an object: :class:`_Unusual`, the body is read whole and the check names it)."""
    spans: list[tuple[int, int]] = []
    at = reader.skip(begin + 1)
    if reader.char(at) == b"]":
        return LazySystems(reader.body, spans), at + 1
    window = _FIRST_WINDOW
    while True:
        if reader.char(at) != b"{":
            raise _Unusual
        _, end = reader.value(at, window)  # decoded once, to check it and find its end
        spans.append((at, end))
        window = max(window, 2 * (end - at))  # the systems of a page are alike: one window each
        at = reader.skip(end)
        if reader.char(at) == b"]":
            return LazySystems(reader.body, spans), at + 1
        at = reader.skip(reader.expect(at, b","))


def _load_bytes(body: bytes) -> Any:
    reader = _Bytes(body)
    at = reader.skip(0)
    if reader.char(at) != b"{":
        raise _Unusual
    data, end = _object_bytes(reader, at, None)
    if reader.skip(end) != len(body):
        raise _Unusual
    return data


# --- reading the decoded text (other encodings, and anything unusual) ------------------------

def _skip(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # matches the empty string too


def _expect(text: str, at: int, char: str) -> int:
    at = _skip(text, at)
    if text[at:at + 1] != char:
        raise json.JSONDecodeError(f"Expecting {char!r}", text, at)
    return at + 1


def _object(text: str, at: int, lazy_key: str | None) -> tuple[dict[str, Any], int]:
    """The object whose ``{`` is at ``at``, and where it ends. Its ``lazy_key`` array (when an
    array of objects) is LazySystems; at the top level (``lazy_key`` None) ``message_response``
    is read the same way with ``systemreport`` lazy. Later duplicate keys win, as in json.loads."""
    result: dict[str, Any] = {}
    at = _skip(text, at + 1)
    if text[at:at + 1] == "}":
        return result, at + 1
    while True:
        at = _skip(text, at)
        if text[at:at + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, at)
        key, at = _DECODER.raw_decode(text, at)
        start = _skip(text, _expect(text, at, ":"))
        if key == lazy_key and text[start:start + 1] == "[":
            value, at = _array(text, start)
        elif lazy_key is None and key == "message_response" and text[start:start + 1] == "{":
            value, at = _object(text, start, "systemreport")
        else:
            value, at = _DECODER.raw_decode(text, start)
        result[key] = value
        at = _skip(text, at)
        if text[at:at + 1] == "}":
            return result, at + 1
        at = _expect(text, at, ",")


def _array(text: str, begin: int) -> tuple[Any, int]:
    """The array whose ``[`` is at ``begin``: LazySystems when every element is an object, else
    decoded whole (the envelope check then names what it holds)."""
    spans: list[tuple[int, int]] = []
    at = _skip(text, begin + 1)
    if text[at:at + 1] == "]":
        return LazySystems(text, spans), at + 1
    while True:
        if text[at:at + 1] != "{":
            return _DECODER.raw_decode(text, begin)
        end = _DECODER.raw_decode(text, at)[1]  # decoded once, to check it and find its end
        spans.append((at, end))
        at = _skip(text, end)
        if text[at:at + 1] == "]":
            return LazySystems(text, spans), at + 1
        at = _skip(text, _expect(text, at, ","))


def _load_text(body: bytes) -> Any:
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    at = _skip(text, 0)
    if text[at:at + 1] != "{":
        return json.loads(text)
    data, end = _object(text, at, None)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip(text, end))
    return data


def load_big(body: bytes) -> Any:
    """The body's JSON as ``json.loads`` would give it, with ``message_response.systemreport``
    as :class:`LazySystems` when it is an array of objects; raises what ``json.loads`` raises."""
    if json.detect_encoding(body) == "utf-8":
        try:
            return _load_bytes(body)
        except Exception:  # noqa: BLE001, S110 - any fault: read whole, to fail exactly as json.loads fails
            pass
    return _load_text(body)
