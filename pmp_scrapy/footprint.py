"""Keeps the crawl process small (spec NFR-1: peak RSS of a sweep under 100 MB).

Three measures, applied by ``pmp_scrapy.settings`` when Scrapy loads the project, before it
walks its commands or downloads anything (a program that merely imports pmp_scrapy's modules
is left alone):

- itemadapter, which Scrapy imports for every command, imports pydantic whenever it is
  installed, to recognise pydantic models as items. This project's items are dataclasses;
  pydantic and pydantic_core would cost about 7 MB of RSS for nothing. Marking the module
  absent makes itemadapter's ``import pydantic`` fail the way it does where pydantic is not
  installed.
- glibc raises its mmap threshold each time a large block is freed, so after the first few
  page bodies (about 350 KB each) every later body comes from the heap, which fragments and is
  not given back. A fixed threshold keeps such blocks in their own mappings, returned to the
  system when freed (measured: 2.5 MB less peak RSS over a sweep). Elsewhere than glibc this
  does nothing.
- glibc gives each thread that allocates its own heap ("arena"). The batch commits run in a
  worker thread; what they free (SQLite's pages, a batch's rows) stays in that thread's arena,
  unusable by the reactor thread parsing the next pages, and the other way round. One arena for
  the process lets each reuse what the other freed (measured with SQLite's page cache held to
  1 MB, :mod:`pmp_scrapy.storage.engine`: median peak RSS of a 3,317-system sweep 98 MB
  against 101 MB, CPU unchanged within the noise).

:func:`release_startup_caches` drops, once the crawl has started, the source lines Scrapy's
deprecation helpers read into :mod:`linecache` while Scrapy loaded (about 0.8 MB).
"""

from __future__ import annotations

import ctypes
import linecache
import sys
from collections.abc import Callable

UNUSED_OPTIONAL_IMPORTS: tuple[str, ...] = ("pydantic",)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


def skip_unused_imports() -> None:
    """Mark :data:`UNUSED_OPTIONAL_IMPORTS` absent, unless something already imported them."""
    for name in UNUSED_OPTIONAL_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _glibc(name: str) -> Callable[..., int] | None:
    """The function ``name`` of the C library the interpreter runs on, when that is glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; ``False`` where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def one_arena() -> bool:
    """Make glibc serve every thread from one heap; ``False`` where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    return bool(mallopt and mallopt(_M_ARENA_MAX, 1))


def release_startup_caches() -> None:
    """Forget the source lines read while Scrapy loaded (tracebacks read them again if needed)."""
    linecache.clearcache()


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``), e.g. between two
    crawls of one process; ``False`` where the C library is not glibc."""
    malloc_trim = _glibc("malloc_trim")
    return bool(malloc_trim and malloc_trim(0))


def apply() -> None:
    """The three measures of the module docstring."""
    skip_unused_imports()
    fix_mmap_threshold()
    one_arena()
