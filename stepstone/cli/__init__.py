"""The `stepstone` command line: run workers (and, later, the HTTP API) for an APP."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from stepstone import __version__
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
    if isinstance(exc, WorkflowNotFoundError | InstanceNotFoundError):
        code = EXIT_NOT_FOUND
    elif isinstance(exc, InvalidStateError | InstanceExistsError):
        code = EXIT_STATE
    elif isinstance(exc, InvalidInputError | ValueError):
        code = EXIT_USAGE
    else:
        code = EXIT_ERROR
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


async def _serve(engine: Engine) -> None:
    """Run the engine until SIGINT or SIGTERM, then hand running instances back and stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with engine:
        names = ", ".join(sorted(engine.workflows)) or "none"
        click.echo(f"stepstone worker ready: {names} on {engine.url}", err=True)
        await stop.wait()
        click.echo("stepstone worker stopping: handing running instances back", err=True)


def _run_worker(app: str, db: str | None, concurrency: int | None) -> None:
    from stepstone.cli.loader import load_engine

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(app)
        if db is not None:
            engine.url = db
        if concurrency is not None:
            if concurrency < 1:
                raise InvalidInputError(f"invalid --concurrency {concurrency}: expected an integer >= 1")
            engine.concurrency = concurrency
        if not engine.workflows:
            raise InvalidInputError(f"invalid APP {app!r}: its Engine serves no workflows (workflows=[...])")
        engine.run_worker = True
        asyncio.run(_serve(engine))
    except StepstoneError as exc:
        fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stepstone")
def main() -> None:
    """stepstone: durable workflows on SQLite or PostgreSQL."""


_db_option = click.option("--db", metavar="URL", help="Database URL; overrides the APP's Engine URL.")


@main.command()
@click.argument("app")
@_db_option
@click.option("--concurrency", type=int, help="Instances run at once by this worker.")
def worker(app: str, db: str | None, concurrency: int | None) -> None:
    """Run a worker for APP (module:attribute or path/to/file.py[:attribute])."""
    _run_worker(app, db, concurrency)


@main.command()
@click.argument("app")
@_db_option
@click.option("--concurrency", type=int, help="Instances run at once by this worker.")
def dev(app: str, db: str | None, concurrency: int | None) -> None:
    """Run APP for development: a worker in this process (SQLite unless --db says otherwise)."""
    _run_worker(app, db, concurrency)


def _add_instance_commands() -> None:
    from stepstone.cli.instances import instances, trigger, workflows

    main.add_command(workflows)
    main.add_command(instances)
    main.add_command(trigger)


_add_instance_commands()
