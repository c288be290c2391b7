"""`--db` and `--json`, accepted before the subcommand (on a group) as well as after it.

A group's option is kept in the context's `meta`, which every context of one command
line shares; a command's own option falls back to it. Groups parse before their
subcommands, so the option given last wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_DB_HELP = "Database URL [$STEPSTONE_DATABASE_URL]."
_JSON_HELP = "Machine-readable output."


def _key(param: click.Parameter) -> str:
    return f"stepstone.cli.{param.name}"


def _given(value: Any) -> bool:
    return value is not None and value is not False  # an absent --db is None, an absent --json False


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A group's --db or --json, kept for the subcommand if given."""
    if _given(value):
        ctx.meta[_key(param)] = value


def _or_remembered(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A command's --db or --json, or else the one given to a group before it."""
    return value if _given(value) else ctx.meta.get(_key(param), value)


def _db(help: str, *, group: bool) -> Callable[[F], F]:
    # No envvar: $STEPSTONE_DATABASE_URL would then beat a --db given before the
    # subcommand. The Engine reads it when no --db is given at all.
    callback = _remember if group else _or_remembered
    return click.option("--db", metavar="URL", callback=callback, expose_value=not group, help=help)


def _json(*, group: bool) -> Callable[[F], F]:
    callback = _remember if group else _or_remembered
    return click.option("--json", "as_json", is_flag=True, callback=callback, expose_value=not group, help=_JSON_HELP)


def group_options(fn: F) -> F:
    """--db and --json on a group, for its subcommands (the group's function gets neither)."""
    fn = _json(group=True)(fn)
    return _db(f"{_DB_HELP} May also follow the subcommand.", group=True)(fn)


def common_options(fn: F) -> F:
    """--db and --json on an instance command (or given before it, to a group)."""
    fn = _json(group=False)(fn)
    return _db(_DB_HELP, group=False)(fn)


def app_db_option(fn: F) -> F:
    """--db on `worker`, `serve` and `dev` (or given before it, to `stepstone`)."""
    return _db("Database URL; overrides the APP's Engine URL.", group=False)(fn)
