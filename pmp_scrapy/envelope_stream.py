"""A page body far above the usual size, read without holding its parsed form whole.

``json.loads`` of a 30 MB page (30 systems x 5,000 patches) builds some 110 MB of dicts and
strings, all alive until the rows are built from them, on top of the body and the rows. For a
body past :data:`STREAM_ABOVE` bytes, :func:`load_big` parses the envelope itself but leaves
``message_response.systemreport`` as :class:`LazySystems`: the positions of its elements in the
decoded text, each element decoded again only when iterated, so one system's parsed form is
alive at a time. Every element is decoded once while the positions are found, so a body that is
not valid JSON (or too deep, or holds an unreadable number) fails here, with the exceptions
``json.loads`` raises, exactly where it would. Reads only the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

#: Bodies above this many bytes are read with :func:`load_big`; the usual page is ~350 KB.
STREAM_ABOVE = 4 << 20

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class LazySystems:
    """A JSON array of objects in ``text``, its elements decoded one at a time when iterated."""

    def __init__(self, text: str, starts: list[int]) -> None:
        self._text, self._starts = text, starts

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in self._starts:
            yield _DECODER.raw_decode(self._text, start)[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _DECODER.raw_decode(self._text, self._starts[index])[0]  # type: ignore[no-any-return]


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
    starts: list[int] = []
    at = _skip(text, begin + 1)
    if text[at:at + 1] == "]":
        return LazySystems(text, starts), at + 1
    while True:
        if text[at:at + 1] != "{":
            return _DECODER.raw_decode(text, begin)
        starts.append(at)
        at = _skip(text, _DECODER.raw_decode(text, at)[1])  # decoded once, to check it and find its end
        if text[at:at + 1] == "]":
            return LazySystems(text, starts), at + 1
        at = _skip(text, _expect(text, at, ","))


def load_big(body: bytes) -> Any:
    """The body's JSON as ``json.loads`` would give it, with ``message_response.systemreport``
    as :class:`LazySystems` when it is an array of objects; raises what ``json.loads`` raises."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    at = _skip(text, 0)
    if text[at:at + 1] != "{":
        return json.loads(text)
    data, end = _object(text, at, None)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip(text, end))
    return data
