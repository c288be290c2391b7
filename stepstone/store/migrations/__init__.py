"""Numbered schema migrations, one folder per dialect: `NNNN_name.sql`, applied in order."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from stepstone.errors import StepstoneError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """Every migration of a dialect ("sqlite", "postgres"), by version."""
    folder = resources.files(__package__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def pending(dialect: str, current: int) -> list[Migration]:
    """Migrations newer than `current`; refuses a database newer than this code."""
    migrations = load(dialect)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StepstoneError(
            f"the database schema is at version {current}, newer than this stepstone knows "
            f"({latest}); upgrade stepstone to use this database"
        )
    return [m for m in migrations if m.version > current]
