"""Persistence: the `Store` interface (base.py) and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from typing import Any

from stepstone.errors import InvalidInputError
from stepstone.store.base import Store

OPTIONS = {"SQLite": ("synchronous",), "PostgreSQL": ("schema", "min_connections", "max_connections")}
"""The options each kind of store takes (Engine(url, **options))."""


def kind_of(url: str) -> str:
    """Which kind of store a URL names: "SQLite" or "PostgreSQL"; InvalidInputError for neither."""
    if url.startswith("sqlite:"):
        return "SQLite"
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "PostgreSQL"
    raise InvalidInputError(
        f"invalid database URL {url!r}: expected sqlite:///path/to/file.db or postgresql://user@host:port/db"
    )


def check_options(url: str, options: dict[str, Any]) -> None:
    """InvalidInputError naming any option the store at `url` does not take."""
    kind = kind_of(url)
    unknown = sorted(name for name in options if name not in OPTIONS[kind])
    if unknown:
        others = [other for other, names in OPTIONS.items() if other != kind and set(unknown) <= set(names)]
        why = f"for {others[0]} stores only" if others else "unknown"
        raise InvalidInputError(
            f"invalid option(s) {', '.join(unknown)} for a {kind} store ({why}): it takes {', '.join(OPTIONS[kind])}"
        )


def options_for(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Of `options`, those the store at `url` takes: what stays of an app's store options when
    another URL replaces its own (say a PostgreSQL one given for an app made on SQLite)."""
    return {name: value for name, value in options.items() if name in OPTIONS[kind_of(url)]}


def from_url(url: str, **options: Any) -> Store:
    """The store a URL names: `sqlite:///file.db` or `postgresql://user@host:port/db`."""
    check_options(url, options)
    if kind_of(url) == "SQLite":
        from stepstone.store.sqlite import SqliteStore

        return SqliteStore(url, **options)
    from stepstone.store.postgres import PostgresStore

    return PostgresStore(url, **options)


def shown_url(url: str) -> str:
    """The URL as messages show it: a PostgreSQL URL without its password."""
    if url.startswith("postgres"):
        from stepstone.store.postgres import redact

        return redact(url)
    return url
