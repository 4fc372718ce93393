"""Storage: the only package that imports SQLAlchemy. ``schema`` declares tables, ``store``
runs the crawl's queries, ``commit`` writes a batch, ``status`` reads for ``scrapy status``.

The names below are imported on first use (PEP 562): ``scrapy status`` and ``scrapy report``
import ``pmp_scrapy.storage.<module>`` and must not pay for the crawl's commit path."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmp_scrapy.storage.batch import Batch, CheckpointResult, ordered_unique
    from pmp_scrapy.storage.store import Store

__all__ = ["Batch", "CheckpointResult", "Store", "ordered_unique"]
_HOMES = {"Batch": "batch", "CheckpointResult": "batch", "ordered_unique": "batch", "Store": "store"}


def __getattr__(name: str) -> Any:
    """``Batch``, ``CheckpointResult``, ``ordered_unique`` and ``Store`` from their modules."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
