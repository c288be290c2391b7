"""The `stepstone` command line: run workers and the HTTP API for an APP, and steer instances."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from stepstone import __version__
from stepstone.cli.options import app_db_option, group_options
from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    InvalidStateError,
    StepstoneError,
    WorkflowNotFoundError,
)

if TYPE_CHECKING:
    from stepstone.engine import Engine

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STATE = 0, 1, 2, 3, 4


def fail(exc: BaseException) -> NoReturn:
    """Print one clear line on stderr and exit with the code that fits the error."""
    if isinstance(exc, InvalidInputError | ValueError):
        code = EXIT_USAGE  # (an id no instance can have is bad input first, not found second)
    elif isinstance(exc, WorkflowNotFoundError | InstanceNotFoundError):
        code = EXIT_NOT_FOUND
    elif isinstance(exc, InvalidStateError | InstanceExistsError):
        code = EXIT_STATE
    else:
        code = EXIT_ERROR
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def store_error(url: str, exc: sqlite3.Error) -> StepstoneError:
    """The error to show for a SQLite store that cannot be opened or used: its URL and file, and what is wrong."""
    from stepstone.store.sqlite import path_from_url

    path = path_from_url(url)  # the store was made from this URL, so it has a path
    if Path(path).is_dir():
        return StepstoneError(f"SQLite store {url}: {path!r} is a directory, not a database file")
    return StepstoneError(f"SQLite store {url} (file {path!r}): {exc}")


async def _serve(engine: Engine) -> None:
    """Run the engine until SIGINT or SIGTERM, then hand running instances back and stop."""
    from stepstone.store import shown_url

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with engine:
        names = ", ".join(sorted(engine.workflows)) or "none"
        click.echo(f"stepstone worker ready: {names} on {shown_url(engine.url)}", err=True)
        await stop.wait()
        click.echo("stepstone worker stopping: handing running instances back", err=True)


def _load(app: str, db: str | None, concurrency: int | None, *, worker: bool) -> Engine:
    """The Engine APP names, with --db and --concurrency applied; a worker needs workflows to serve."""
    from stepstone.cli.loader import load_engine

    engine = load_engine(app)
    if db is not None:
        engine.use_url(db)
    if concurrency is not None:
        if concurrency < 1:
            raise InvalidInputError(f"invalid --concurrency {concurrency}: expected an integer >= 1")
        engine.concurrency = concurrency
    if worker and not engine.workflows:
        raise InvalidInputError(f"invalid APP {app!r}: its Engine serves no workflows (workflows=[...])")
    engine.run_worker = worker
    return engine


def _run_worker(app: str, db: str | None, concurrency: int | None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = _load(app, db, concurrency, worker=True)
        asyncio.run(_serve(engine))
    except StepstoneError as exc:
        fail(exc)
    except sqlite3.Error as exc:
        fail(store_error(engine.url, exc))


def _run_api(app: str, db: str | None, host: str, port: int, *, worker: bool, concurrency: int | None = None) -> None:
    """Serve the HTTP API for APP (with a worker in this process if `worker`) until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = _load(app, db, concurrency, worker=worker)
        from stepstone.http import server  # Starlette and uvicorn load only for the commands that serve

        server.run(engine, host=host, port=port)
    except StepstoneError as exc:
        fail(exc)
    except sqlite3.Error as exc:
        fail(store_error(engine.url, exc))


_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",) if hasattr(click.exceptions, name)
)
"""Click 8.2's way of showing a group's help when it is given nothing (before it, help and exit 0)."""


class _OneLineErrors(click.Group):
    """The root command: a usage mistake (an unknown command or option, a missing or bad
    argument) is one line on stderr and exit code 2, as every other user error is, not
    Click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):  # `stepstone` or a group alone: its help, as ever
                exc.show()
                sys.exit(exc.exit_code)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_ERROR)
        # --help and --version end with their exit code; a command that returns, with 0.
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stepstone")
@group_options
def main() -> None:
    """stepstone: durable workflows on SQLite or PostgreSQL."""


@main.command()
@click.argument("app")
@app_db_option
@click.option("--concurrency", type=int, help="Instances run at once by this worker (default: the app's, 256).")
def worker(app: str, db: str | None, concurrency: int | None) -> None:
    """Run a worker for APP (module:attribute or path/to/file.py[:attribute])."""
    _run_worker(app, db, concurrency)


_host_option = click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP API listens on.")
_port_option = click.option(
    "--port", type=int, default=8787, show_default=True, help="Port the HTTP API listens on (0: any free port)."
)


@main.command()
@click.argument("app")
@app_db_option
@_host_option
@_port_option
def serve(app: str, db: str | None, host: str, port: int) -> None:
    """Serve the HTTP API for APP's store (a client: `stepstone worker` processes run the instances).

    With $STEPSTONE_API_TOKEN set, every request needs `Authorization: Bearer <token>`;
    without it, only a loopback --host is allowed.
    """
    _run_api(app, db, host, port, worker=False)


@main.command()
@click.argument("app")
@app_db_option
@click.option("--concurrency", type=int, help="Instances run at once by this worker (default: the app's, 256).")
@_host_option
@_port_option
def dev(app: str, db: str | None, concurrency: int | None, host: str, port: int) -> None:
    """Run APP for development: a worker and the HTTP API in this process, on the app's store (or --db's)."""
    _run_api(app, db, host, port, worker=True, concurrency=concurrency)


def _add_instance_commands() -> None:
    from stepstone.cli.instances import instances, trigger, workflows

    main.add_command(workflows)
    main.add_command(instances)
    main.add_command(trigger)


_add_instance_commands()
