"""Instance commands that need no APP: `workflows`, `instances ...`, `trigger` (like `wrangler workflows`)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from stepstone.cli import output
from stepstone.cli.options import common_options, group_options
from stepstone.errors import InvalidInputError, StepstoneError

T = TypeVar("T")


def run_client(db: str | None, action: Callable[[Any], Awaitable[T]], *, if_no_store: T | None = None) -> T:
    """Run `action(engine)` with a client Engine (no worker) on `db`; errors end the process.

    A SQLite file that does not exist is not created (a mistyped path must not leave an
    empty store behind): the result is then `if_no_store`, or without one, no workflow
    is known there (exit 3).
    """
    from stepstone.cli import fail, store_error
    from stepstone.engine import Engine
    from stepstone.errors import WorkflowNotFoundError

    engine = Engine(db, worker=False)  # no --db: $STEPSTONE_DATABASE_URL, or the default
    try:
        missing = _no_store_at(engine.url)
    except StepstoneError as exc:
        fail(exc)
    except OSError as exc:  # the database server is unreachable
        fail(exc)
    if missing is not None:
        if if_no_store is not None:
            return if_no_store
        fail(WorkflowNotFoundError(
            f"{missing}, so no workflow is known there: no Engine has run on it (check --db or $STEPSTONE_DATABASE_URL)"
        ))  # fmt: skip

    async def main() -> T:
        async with engine:
            return await action(engine)

    try:
        return asyncio.run(main())
    except StepstoneError as exc:
        fail(exc)
    except OSError as exc:  # the database server is unreachable, a file cannot be opened
        fail(exc)
    except sqlite3.Error as exc:  # the file is a directory, or not a SQLite database
        fail(store_error(engine.url, exc))


def _no_store_at(url: str) -> str | None:
    """What is missing if no store is at `url` (nothing is created to find out); None if one is."""
    from stepstone import store as stores

    if stores.kind_of(url) == "SQLite":
        from stepstone.store.sqlite import path_from_url

        path = path_from_url(url)
        return None if os.path.lexists(path) else f"no store at {path!r} ({url})"
    from stepstone.store.postgres import PostgresStore

    store = PostgresStore(url)
    if asyncio.run(store.exists()):
        return None
    return f"no store in {stores.shown_url(url)} (no schema {store.schema!r} with stepstone's tables)"


def parse_json(value: str | None, option: str) -> Any:
    """The JSON value of an option; a bad one ends the process with exit code 2."""
    from stepstone.cli import fail

    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        fail(InvalidInputError(f"invalid {option} {value!r}: not JSON ({exc.msg} at position {exc.pos})"))


@click.group()
@group_options
def workflows() -> None:
    """Workflows recorded in the store."""


@workflows.command("list")
@common_options
def workflows_list(db: str | None, as_json: bool) -> None:
    """List workflows with their instance counts by status."""
    from stepstone.instances import workflow_rows

    output.workflows(run_client(db, workflow_rows, if_no_store=[]), as_json)


@click.group()
@group_options
def instances() -> None:
    """Inspect and steer the instances of a workflow."""


@instances.command("list")
@click.argument("workflow")
@click.option("--status", help="Only instances of this status.")
@click.option("--limit", type=int, default=50, show_default=True, help="Instances per page.")
@click.option("--cursor", help="Continue from a previous page (its next_cursor).")
@common_options
def instances_list(
    workflow: str, status: str | None, limit: int, cursor: str | None, db: str | None, as_json: bool
) -> None:
    """List a workflow's instances, newest first."""

    async def action(engine: Any) -> tuple[list[Any], str | None]:
        handle = await engine.find_workflow(workflow)
        page = await handle.list(status=status, limit=limit, cursor=cursor)
        details = [await inst.describe(steps=False) for inst in page]
        return details, page.next_cursor

    details, next_cursor = run_client(db, action)
    output.instance_list(details, next_cursor, as_json)


def _resolve(engine: Any, workflow: str, instance_id: str) -> Awaitable[Any]:
    async def find() -> Any:
        handle = await engine.find_workflow(workflow)
        if instance_id == "latest":
            page = await handle.list(limit=1)
            if not page:
                from stepstone.errors import InstanceNotFoundError

                raise InstanceNotFoundError(f"workflow {workflow!r} has no instances")
            return page[0]
        return await handle.get(instance_id)

    return find()


@instances.command("describe")
@click.argument("workflow")
@click.argument("instance_id", metavar="ID", default="latest")
@click.option("--follow", is_flag=True, help="Keep showing the instance as it changes, until it ends.")
@common_options
def instances_describe(workflow: str, instance_id: str, follow: bool, db: str | None, as_json: bool) -> None:
    """Show an instance (ID, or `latest`): status, params, output or error, and its steps."""

    async def action(engine: Any) -> Any:
        inst = await _resolve(engine, workflow, instance_id)
        return await (_follow(inst, as_json) if follow else inst.describe())

    output.instance_detail(run_client(db, action), as_json)


async def _follow(inst: Any, as_json: bool) -> Any:
    """Redraw the instance as it changes (JSON: one line per change) until it ends; returns its last state."""
    from rich.live import Live

    from stepstone.store.base import is_terminal

    detail = await inst.describe()
    if as_json:
        while not is_terminal(detail.status):
            click.echo(json.dumps(detail.as_dict(), default=str))
            detail = await _changed(inst, detail)
        return detail
    with Live(output.detail_view(detail), console=output.console(), auto_refresh=False) as live:
        while not is_terminal(detail.status):
            detail = await _changed(inst, detail)
            live.update(output.detail_view(detail), refresh=True)
    return detail


async def _changed(inst: Any, detail: Any, every: float = 0.25) -> Any:
    while True:
        await asyncio.sleep(every)
        latest = await inst.describe()
        if latest != detail:
            return latest


def _control(name: str, doc: str) -> None:
    @instances.command(name, help=doc)
    @click.argument("workflow")
    @click.argument("instance_id", metavar="ID")
    @common_options
    def command(workflow: str, instance_id: str, db: str | None, as_json: bool) -> None:
        async def action(engine: Any) -> str:
            inst = await _resolve(engine, workflow, instance_id)
            await getattr(inst, name)()
            if name == "delete":
                return "deleted"
            return str((await inst.status()).status)

        status = run_client(db, action)
        output.done(f"{name}d {workflow}/{instance_id}", {"id": instance_id, "status": status}, as_json)


for _name, _doc in (
    ("pause", "Pause an instance before its next step."),
    ("resume", "Resume a paused instance."),
    ("terminate", "Terminate an instance for good."),
    ("delete", "Delete an instance and its history."),
):
    _control(_name, _doc)


@instances.command("terminate-all")
@click.argument("workflow")
@click.option("--status", help="Only instances of this status (default: every one that has not ended).")
@common_options
def instances_terminate_all(workflow: str, status: str | None, db: str | None, as_json: bool) -> None:
    """Terminate every instance of a workflow (or those of one status)."""
    from stepstone.errors import InvalidStateError, StepstoneError
    from stepstone.store.base import is_terminal

    async def action(engine: Any) -> int:
        handle = await engine.find_workflow(workflow)
        terminated, cursor = 0, None
        while True:
            page = await handle.list(status=status, limit=500, cursor=cursor)
            for inst in page:
                if status is None and is_terminal((await inst.status()).status):
                    continue
                try:
                    await inst.terminate()
                    terminated += 1
                except (InvalidStateError, StepstoneError):
                    pass  # ended or deleted meanwhile
            cursor = page.next_cursor
            if cursor is None:
                return terminated

    count = run_client(db, action)
    output.done(f"terminated {count} instances of {workflow}", {"terminated": count}, as_json)


def _given(param: str) -> bool:
    """Whether the command line gave the current command's option `param` (not its default)."""
    source = click.get_current_context().get_parameter_source(param)
    return source is not None and source is not click.core.ParameterSource.DEFAULT


@instances.command("restart")
@click.argument("workflow")
@click.argument("instance_id", metavar="ID")
@click.option("--from-step", help="Keep the results recorded before this step; run again from it.")
@click.option("--count", type=int, default=1, show_default=True, help="Occurrence of --from-step.")
@click.option("--type", "kind", default="do", show_default=True, help="Kind of --from-step: do, sleep, wait_for_event.")
@common_options
def instances_restart(
    workflow: str, instance_id: str, from_step: str | None, count: int, kind: str, db: str | None, as_json: bool
) -> None:
    """Run an instance again from the start (or from a step)."""
    if from_step is None:
        given = [option for option, param in (("--count", "count"), ("--type", "kind")) if _given(param)]
        if given:
            from stepstone.cli import fail

            fail(InvalidInputError(f"{' and '.join(given)} need --from-step (the step to restart from)"))

    async def action(engine: Any) -> str:
        inst = await _resolve(engine, workflow, instance_id)
        await inst.restart(from_step=from_step, count=count, type=kind)
        return str((await inst.status()).status)

    status = run_client(db, action)
    output.done(f"restarted {workflow}/{instance_id}", {"id": instance_id, "status": status}, as_json)


@instances.command("send-event")
@click.argument("workflow")
@click.argument("instance_id", metavar="ID")
@click.argument("event_type", metavar="TYPE", required=False)
@click.option("--type", "type_option", metavar="TYPE", help="The event type (or give it as the third argument).")
@click.option("--payload", metavar="JSON", help="The event payload, as JSON.")
@common_options
def instances_send_event(
    workflow: str,
    instance_id: str,
    event_type: str | None,
    type_option: str | None,
    payload: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Send an event of TYPE to an instance."""
    from stepstone.cli import fail

    chosen = event_type or type_option
    if chosen is None:
        fail(InvalidInputError("missing event type: give TYPE or --type"))
    value = parse_json(payload, "--payload")

    async def action(engine: Any) -> None:
        inst = await _resolve(engine, workflow, instance_id)
        await inst.send_event(chosen, value)

    run_client(db, action)
    output.done(f"sent {chosen!r} to {workflow}/{instance_id}", {"id": instance_id, "type": chosen}, as_json)


@click.command()
@click.argument("workflow")
@click.argument("params_argument", metavar="[PARAMS]", required=False)
@click.option("--params", metavar="JSON", help="The instance's params, as JSON.")
@click.option("--id", "instance_id", help="The instance id (default: generated).")
@click.option("--wait", is_flag=True, help="Wait until the instance ends; show its progress and outcome.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds (exit 1).")
@common_options
def trigger(
    workflow: str, params_argument: str | None, params: str | None, instance_id: str | None, wait: bool,
    timeout: float | None, db: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Create an instance of WORKFLOW; prints its id (and with --wait, how it ended)."""
    from stepstone.cli import fail

    if params is not None and params_argument is not None:
        fail(InvalidInputError("params given twice: give PARAMS or --params, not both"))
    if timeout is not None and not (0 < timeout < math.inf):
        fail(InvalidInputError(f"invalid --timeout {timeout!r}: expected a number of seconds > 0"))
    if timeout is not None and not wait:
        fail(InvalidInputError("--timeout needs --wait (it is how long to wait for the instance to end)"))
    value = parse_json(params if params is not None else params_argument, "--params")

    async def action(engine: Any) -> Any:
        handle = await engine.find_workflow(workflow)
        inst = await handle.create(id=instance_id, params=value)
        if not wait:
            return inst.id, None
        if not as_json:
            click.echo(inst.id)
        follow = _follow(inst, as_json=False) if not as_json else inst.describe()
        try:
            async with asyncio.timeout(timeout):
                await follow
                await inst.wait()
        except TimeoutError:
            fail(StepstoneError(f"instance {inst.id!r} did not end within {timeout:g} s"))
        return inst.id, await inst.describe()

    new_id, detail = run_client(db, action)
    if detail is not None:
        if as_json:
            output.print_json(detail.as_dict())
        if detail.status != "complete":
            sys.exit(1)
    elif as_json:
        click.echo(json.dumps({"id": new_id, "workflow": workflow, "status": "queued"}))
    else:
        click.echo(new_id)
