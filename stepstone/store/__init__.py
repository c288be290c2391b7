"""Persistence: the `Store` interface (base.py) and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from typing import Any

from stepstone.errors import InvalidInputError
from stepstone.store.base import Store


def from_url(url: str, **options: Any) -> Store:
    """The store a URL names: `sqlite:///file.db` or `postgresql://user@host:port/db`."""
    if url.startswith("sqlite:"):
        from stepstone.store.sqlite import SqliteStore

        return SqliteStore(url, **options)
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        from stepstone.store.postgres import PostgresStore

        return PostgresStore(url, **options)
    raise InvalidInputError(
        f"invalid database URL {url!r}: expected sqlite:///path/to/file.db or postgresql://user@host:port/db"
    )


def shown_url(url: str) -> str:
    """The URL as messages show it: a PostgreSQL URL without its password."""
    if url.startswith("postgres"):
        from stepstone.store.postgres import redact

        return redact(url)
    return url
