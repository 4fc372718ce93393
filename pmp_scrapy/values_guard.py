"""Values a database can hold: the one guard every text from PMP passes before it is stored.

SQLite's and PostgreSQL's drivers refuse some values a JSON body may carry: a lone UTF-16
surrogate (``"\\ud83d"``, valid JSON) cannot be encoded as UTF-8, and PostgreSQL's text type
cannot hold a NUL character. Either refusal would fail the whole transaction, losing every page
of the batch, run after run. So each value is made storable on its own: such characters become
U+FFFD, a text longer than :data:`MAX_TEXT_CHARS` is cut there, and each repair is counted by
kind (:data:`REPAIR_KINDS`; the spider adds the counts to the ``pmp/values_repaired/<kind>``
stats). Ids that are not finite scalars are refused (:func:`id_text`), never stored as keys.

Reads nothing, writes nothing but the caller's counter: no HTTP, no SQL, no logging.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

#: Characters kept per stored text (mapping fields, system names, gap messages). Far above any
#: real patch name, bulletin or host name; a 5 MB string is cut here and counted ``truncated``.
MAX_TEXT_CHARS = 4096
REPLACEMENT = "\ufffd"
#: The kinds of repair, as counted: ``surrogate`` (a lone UTF-16 surrogate), ``nul`` (U+0000),
#: ``truncated`` (longer than :data:`MAX_TEXT_CHARS`).
REPAIR_KINDS: tuple[str, ...] = ("surrogate", "nul", "truncated")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str, repairs: Counter[str] | None = None, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` as a database can hold it: at most ``limit`` characters, lone surrogates and NUL
    characters replaced by U+FFFD. Each kind of repair made is counted once in ``repairs``."""
    if len(text) <= limit and (("\x00" not in text) if text.isascii() else _UNSTORABLE.search(text) is None):
        return text  # the common case, decided without a copy
    if len(text) > limit:
        text = text[:limit]
        if repairs is not None:
            repairs["truncated"] += 1
        if not _UNSTORABLE.search(text):
            return text
    if repairs is not None:
        if "\x00" in text:
            repairs["nul"] += 1
        if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):
            repairs["surrogate"] += 1
    return _UNSTORABLE.sub(REPLACEMENT, text)


MESSAGE_CHARS = 300  # a gap's error_message and its log line: one line, at most this long


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), storable,
    at most ``limit`` characters."""
    return storable_text(" ".join(text.split()), limit=limit)


def describe_value(value: Any, limit: int = 60) -> str:
    """A short, one-line, storable rendering of a JSON value for messages: ``NaN``, ``Infinity``,
    ``true``, ``an object``, ``an array``, a number, or a quoted string cut at ``limit``."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        shown = json.dumps(value[:limit], ensure_ascii=True)
        return shown + ("…" if len(value) > limit else "")
    text = str(value)
    if isinstance(value, int) and len(text) > limit:
        return f"an integer of {len(text)} digits"
    return storable_text(text, limit=limit)


def id_text(value: Any, repairs: Counter[str] | None = None) -> tuple[str | None, str]:
    """An id (``resource_id``, ``patch_id``) as stored text, or ``None`` and why it is refused.

    Numbers and strings are ids (``5``, ``5.0`` and ``"5"`` are all ``"5"``; integers of any size
    are kept as text); null, an empty string, NaN, ±Infinity, booleans, objects and arrays are
    not, and neither is a string longer than :data:`MAX_TEXT_CHARS` (cut, it would be a
    different key). A string id is repaired like any text (:func:`storable_text`)."""
    kind = type(value)
    if kind is str or kind is int:  # what ids are, nearly always
        text = str(value)
    elif value is None:
        return None, "missing"
    elif kind is float and math.isfinite(value):
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, (bool, dict, list, float)):
        return None, describe_value(value)
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        return None, f"a {kind.__name__}"
    if not text:
        return None, "empty"
    if len(text) > MAX_TEXT_CHARS:
        return None, f"longer than {MAX_TEXT_CHARS} characters"
    return storable_text(text, repairs), ""
