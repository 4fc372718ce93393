"""Project exceptions. Each docstring says who raises it and what it means for the run."""

from __future__ import annotations


class PMPError(Exception):
    """Base class of every project error; its message is one line fit for a user."""


class ConfigError(PMPError):
    """Raised by ``config.load_config`` and by components' ``from_crawler`` when a setting or a
    spider argument is missing or malformed. The run ends before any request, exit code 1."""


class CredentialsError(ConfigError):
    """Raised by ``credentials`` when a required secret cannot be found anywhere."""


class TokenRefreshError(PMPError):
    """Raised by the token middleware when the accounts server refuses or cannot be reached
    after every try. ``cause`` is ``bad_credentials``, ``throttled``, ``unreachable`` or
    ``bad_response``; the run stops cleanly with exit code 1."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class StorageError(PMPError):
    """Raised by ``storage.store`` when the database cannot be opened, created or written
    (locked, read-only, unreachable). The run stops with exit code 1; nothing uncommitted is
    claimed by a checkpoint."""


class NoDatabase(StorageError):
    """Raised by ``storage.engine.open_engine`` (``create=False``) when the database file does
    not exist: ``scrapy status`` and ``scrapy report`` never create one."""


class SnapshotIdConflict(StorageError):
    """Raised by ``storage.store`` when another job took the snapshot id being allocated; the
    store allocates again."""
