"""Several MSP customers in one job, the decisions (pure: values in, values out; no Scrapy, no
HTTP, no SQL): which customers ``-a customer=all`` or ``-a customer=Acme,Globex`` names, what the
server's customer list says, which of the named customers it has, and the job's exit code.

The wiring (the discovery request, one crawler per customer, one token) is
:mod:`pmp_scrapy.msp`; the crawl command prints the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pmp_scrapy.config import customer_name
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.values_guard import describe_value, one_line

#: ``-a customer=all``: every customer the server lists, in its order.
ALL = "all"
#: Names listed in a message about an unknown customer, at most.
LISTED_NAMES = 10


@dataclass(frozen=True)
class CustomerSelection:
    """What ``customer=`` names when it names several customers: ``everyone`` (``all``) or the
    ``names`` of a comma-separated list, in the order given (each once). ``given`` is the whole
    value: a name with a comma in it is one customer when the server has it whole."""

    everyone: bool
    names: tuple[str, ...]
    given: str


def parse_selection(value: Any) -> CustomerSelection | None:
    """``customer=all`` or a comma-separated list as a :class:`CustomerSelection`; ``None`` for
    one name (or none): the crawl of one customer, as before. Each name is checked as a spider
    argument's customer name; empty items of a list (``Acme,,Globex``, a trailing comma) are
    ignored, a list without any name is a :class:`ConfigError`."""
    if value is None:
        return None
    text = str(value).strip()
    if text == ALL:
        return CustomerSelection(everyone=True, names=(), given=text)
    if "," not in text:
        return None
    names: list[str] = []
    for item in text.split(","):
        if item.strip() and (name := customer_name(item)) not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"customer must be 'all', a customer name or a comma-separated list of them, got {text!r}")
    return CustomerSelection(everyone=False, names=tuple(names), given=customer_name(text))


class CustomerListError(Exception):
    """The server's answer to ``/api/1.4/desktop/customers`` gives no customer list; the message
    (one line) says why."""


#: The error code of an on-premises build that does not serve an endpoint (PMP-API.md).
UNSUPPORTED_CODE = "10022"


def read_customer_list(status: int, body: bytes) -> list[str]:
    """The customer names of a ``/api/1.4/desktop/customers`` answer (``message_response.customers
    [].customer_name``), in the server's order, each once; entries without a usable name are
    skipped. Raises :class:`CustomerListError` when the answer holds no customer."""
    if status != 200:
        raise CustomerListError(f"HTTP {status}")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise CustomerListError("the answer is not JSON") from None
    if not isinstance(payload, dict):
        raise CustomerListError(f"the answer is {describe_value(payload)}, not an object")
    if str(payload.get("error_code", "")) == UNSUPPORTED_CODE:
        raise CustomerListError("the server does not serve the customer list (not an MSP edition?)")
    response = payload.get("message_response")
    customers = response.get("customers") if isinstance(response, dict) else None
    if not isinstance(customers, list):
        raise CustomerListError("message_response.customers is missing or not a list")
    names: list[str] = []
    for entry in customers:
        name = entry.get("customer_name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name.strip() and "\n" not in name and name not in names:
            names.append(name)  # exact: customername must match it character for character
    if not names:
        raise CustomerListError("the server lists no customers")
    return names


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:LISTED_NAMES])
    return shown + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")


def resolve(selection: CustomerSelection, listed: Sequence[str]) -> list[str]:
    """The customers to sweep, in turn: every listed one for ``all``, else the names given, each
    of which the server must list exactly (case-sensitive, as ``customername`` is). A name it
    does not list is a :class:`ConfigError` naming it, what the server has, and a name that
    differs only in case."""
    if selection.everyone:
        return list(listed)
    if selection.given in listed:
        return [selection.given]  # one customer whose name holds a comma
    unknown = [name for name in selection.names if name not in listed]
    if not unknown:
        return list(selection.names)
    folded = {name.casefold(): name for name in listed}
    hints = [f"{folded[name.casefold()]!r} for {name!r}" for name in unknown if name.casefold() in folded]
    what = "is not a customer" if len(unknown) == 1 else "are not customers"
    message = (f"customer: {_listed(unknown)} {what} of this PMP server (it lists {_listed(listed)}; "
               "names are exact and case-sensitive)")
    if hints:
        message += f"; did you mean {', '.join(hints)}?"
    raise ConfigError(one_line(message, limit=600))


@dataclass(frozen=True)
class CustomerResult:
    """How one customer's sweep ended (from its run record), or why it was not swept."""

    customer: str
    exit_code: int
    message: str
    pages_committed: int = 0
    gaps_opened: int = 0
    gaps_resolved: int = 0
    mappings: int = 0
    coverage: int = 0
    total: int | None = None
    target_met: bool = False
    swept: bool = True  # False: the job stopped before this customer


def not_swept(customer: str, why: str) -> CustomerResult:
    """A customer the job did not reach (exit 2: the next job sweeps it)."""
    return CustomerResult(customer, 2, f"not swept: {why}", swept=False)


def worst_exit_code(codes: Iterable[int]) -> int:
    """The job's exit code from its customers': 1 (fatal) over 2 (partial) over 0 (done); an
    unknown code counts as fatal."""
    codes = set(codes)
    if codes - {0, 2}:
        return 1
    return 2 if 2 in codes else 0


def job_message(results: Sequence[CustomerResult]) -> str:
    """The job's one-line result: how many customers ended how, naming those that did not end 0."""
    labels = {0: "done", 1: "fatal", 2: "partial"}
    parts = []
    for code in (0, 2, 1):
        names = [r.customer for r in results if r.exit_code == code and r.swept]
        if names:
            parts.append(f"{len(names)} {labels[code]}" + (f" ({', '.join(names)})" if code else ""))
    skipped = [r.customer for r in results if not r.swept]
    if skipped:
        parts.append(f"{len(skipped)} not swept ({', '.join(skipped)})")
    return f"{len(results)} customer(s): " + ", ".join(parts)
