"""Storage: the only package that imports SQLAlchemy. ``schema`` declares tables, ``store``
runs the crawl's queries, ``commit`` writes a batch, ``status`` reads for ``scrapy status``."""

from pmp_scrapy.storage.batch import Batch, CheckpointResult, ordered_unique
from pmp_scrapy.storage.store import Store

__all__ = ["Batch", "CheckpointResult", "Store", "ordered_unique"]
