"""Storage: the only package that imports SQLAlchemy. ``schema`` declares tables, ``store``
runs every query."""

from pmp_scrapy.storage.store import Batch, CheckpointResult, RunState, Store, get_store

__all__ = ["Batch", "CheckpointResult", "RunState", "Store", "get_store"]
