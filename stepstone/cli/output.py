"""How the CLI prints: readable tables by default, JSON with --json."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from stepstone.instances import InstanceDetail


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, default=_default, indent=2))


def console() -> Any:
    from rich.console import Console

    return Console()


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def workflows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("workflow", "instances", "by status")
    for row in rows:
        counts = row["counts"]
        table.add_row(
            row["name"], str(sum(counts.values())), ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "-"
        )
    console().print(table)


def instance_list(details: list[InstanceDetail], next_cursor: str | None, as_json: bool) -> None:
    if as_json:
        print_json([d.as_dict(steps=False) for d in details])
        if next_cursor is not None:  # (stdout stays the bare array; the way on goes beside it)
            print(f"more: --cursor {next_cursor}", file=sys.stderr)
        return
    from rich.table import Table

    table = Table("id", "status", "created", "updated")
    for d in details:
        table.add_row(d.id, d.status, _when(d.created), _when(d.updated))
    screen = console()
    screen.print(table)
    if next_cursor is not None:
        screen.print(f"more: --cursor {next_cursor}")


def detail_view(detail: InstanceDetail) -> Any:
    """A rich renderable of an instance: its header and a table of its steps."""
    from rich.console import Group
    from rich.table import Table

    lines = [
        f"[bold]{detail.workflow}/{detail.id}[/bold]  {detail.status}",
        f"created {_when(detail.created)}  updated {_when(detail.updated)}",
        f"params  {json.dumps(detail.params)}",
    ]
    if detail.output is not None:
        lines.append(f"output  {json.dumps(detail.output)}")
    if detail.error is not None:
        lines.append(f"error   {detail.error.get('name')}: {detail.error.get('message')}")
    table = Table("step", "type", "status", "attempts", "started", "due / ended")
    for step in detail.steps:
        attempts = ", ".join(
            f"#{a.attempt} {a.outcome} {(a.ended - a.started).total_seconds() * 1000:.0f} ms"
            + (f" {a.error['name']}: {a.error['message']}" if a.error else "")
            for a in step.attempts
        )
        label = step.name if step.count == 1 else f"{step.name} #{step.count}"
        end = _when(step.ended) if step.ended else f"due {_when(step.due)}"
        table.add_row(label, step.kind, step.status, attempts or "-", _when(step.started), end)
    return Group(*lines, table)


def instance_detail(detail: InstanceDetail, as_json: bool) -> None:
    if as_json:
        print_json(detail.as_dict())
    else:
        console().print(detail_view(detail))


def done(message: str, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(message)
