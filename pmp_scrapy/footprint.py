"""Keeps optional imports the crawl never uses out of the process (spec NFR-1: peak RSS of the
crawl under 100 MB).

itemadapter, which Scrapy imports for every command, imports pydantic whenever it is installed,
to recognise pydantic models as items. This project's items are dataclasses; pydantic and
pydantic_core would cost about 7 MB of RSS for nothing. Marking the module absent makes
itemadapter's ``import pydantic`` fail the way it does where pydantic is not installed.
"""

from __future__ import annotations

import sys

UNUSED_OPTIONAL_IMPORTS: tuple[str, ...] = ("pydantic",)


def skip_unused_imports() -> None:
    """Mark :data:`UNUSED_OPTIONAL_IMPORTS` absent, unless something already imported them."""
    for name in UNUSED_OPTIONAL_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
