"""The `stepstone` command line, run as a real subprocess against both stores (SPEC §5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from stepstone import Engine
from stepstone.store.base import STATUSES

from .app import Greeter

ONE_QUEUED = {status: int(status == "queued") for status in STATUSES}
"""`workflows list --json` counts of a workflow with one queued instance: every status named."""

APP = str(Path(__file__).with_name("app.py"))
STEPSTONE = [sys.executable, "-m", "stepstone"]


def cli(*args: str, url: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPSTONE_DATABASE_URL": url}
    result = subprocess.run([*STEPSTONE, *args], capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"stepstone {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
async def registered(store_url: str) -> str:
    """A store in which an Engine has recorded the `greeter` workflow."""
    async with Engine(store_url, workflows=[Greeter], worker=False):
        pass
    return store_url


@pytest.fixture
def worker(registered: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [*STEPSTONE, "worker", APP, "--db", registered],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STEPSTONE_DATABASE_URL": registered},
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "ready" in line, line
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stderr.close()


def wait_for_status(url: str, instance_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    """Poll `describe` until the instance (which may not exist yet) has `status`."""
    deadline = time.monotonic() + timeout
    while True:
        described = cli("instances", "describe", "greeter", instance_id, "--json", url=url, check=False)
        detail: dict[str, Any] = json.loads(described.stdout) if described.returncode == 0 else {"status": None}
        if detail["status"] == status:
            return detail
        assert time.monotonic() < deadline, (described.stderr, detail)
        time.sleep(0.05)


def test_version_and_help() -> None:
    assert subprocess.run([*STEPSTONE, "--version"], capture_output=True, text=True).stdout.startswith("stepstone")
    helped = subprocess.run([*STEPSTONE, "--help"], capture_output=True, text=True)
    for command in ("worker", "dev", "instances", "workflows", "trigger"):
        assert command in helped.stdout


def test_trigger_then_a_worker_runs_the_instance_to_completion(registered: str, worker: subprocess.Popen[str]) -> None:
    new_id = cli("trigger", "greeter", "--params", '{"who": "ana"}', "--id", "g-1", url=registered).stdout.strip()
    assert new_id == "g-1"
    wait_for_status(registered, "g-1", "waiting")
    cli("instances", "send-event", "greeter", "g-1", "reply", "--payload", '"hi back"', url=registered)
    detail = wait_for_status(registered, "g-1", "complete")
    assert detail["output"] == {"greeting": "hello ana", "reply": "hi back"}
    assert detail["params"] == {"who": "ana"}
    assert [(s["name"], s["kind"], s["status"]) for s in detail["steps"]] == [
        ("greet", "do", "complete"),
        ("reply", "wait_for_event", "complete"),
    ]
    assert detail["steps"][0]["attempts"][0]["outcome"] == "ok"


def test_worker_stops_cleanly_on_sigterm(worker: subprocess.Popen[str]) -> None:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0


def test_trigger_generates_an_id_and_lists_show_it(registered: str) -> None:
    new_id = cli("trigger", "greeter", '{"who": "bo"}', url=registered).stdout.strip()
    listed = json.loads(cli("instances", "list", "greeter", "--json", url=registered).stdout)
    assert [(row["id"], row["workflow"], row["status"]) for row in listed] == [(new_id, "greeter", "queued")]
    assert "created" in listed[0]
    workflows = json.loads(cli("workflows", "list", "--json", url=registered).stdout)
    assert workflows == [{"name": "greeter", "counts": ONE_QUEUED}]
    latest = json.loads(cli("instances", "describe", "greeter", "latest", "--json", url=registered).stdout)
    assert latest["id"] == new_id
    assert {"id", "status", "params", "output", "error", "steps"} <= set(latest)


def test_instances_list_json_pages_with_the_cursor_on_stderr(registered: str) -> None:
    for who in ("a", "b", "c"):
        cli("trigger", "greeter", "--params", json.dumps({"who": who}), "--id", who, url=registered)
    first = cli("instances", "list", "greeter", "--json", "--limit", "2", url=registered)
    assert [row["id"] for row in json.loads(first.stdout)] == ["c", "b"]
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    last = cli("instances", "list", "greeter", "--json", "--limit", "2", "--cursor", cursor, url=registered)
    assert ([row["id"] for row in json.loads(last.stdout)], last.stderr) == (["a"], "")


def test_lifecycle_commands_and_their_exit_codes(registered: str) -> None:
    cli("trigger", "greeter", "--params", '{"who": "cy"}', "--id", "c-1", url=registered)
    paused = json.loads(cli("instances", "pause", "greeter", "c-1", "--json", url=registered).stdout)
    assert paused == {"id": "c-1", "status": "paused"}
    assert_one_line_error(cli("instances", "pause", "greeter", "c-1", url=registered, check=False), 4)
    cli("instances", "resume", "greeter", "c-1", url=registered)
    cli("instances", "terminate", "greeter", "c-1", url=registered)
    assert_one_line_error(cli("instances", "send-event", "greeter", "c-1", "reply", url=registered, check=False), 4)
    restarted = json.loads(cli("instances", "restart", "greeter", "c-1", "--json", url=registered).stdout)
    assert restarted["status"] == "queued"
    cli("instances", "delete", "greeter", "c-1", url=registered)
    assert_one_line_error(cli("instances", "describe", "greeter", "c-1", url=registered, check=False), 3)


def test_user_errors_are_one_line_with_meaningful_exit_codes(registered: str) -> None:
    assert_one_line_error(cli("trigger", "nope", url=registered, check=False), 3)
    assert_one_line_error(cli("trigger", "greeter", "--params", "{bad", url=registered, check=False), 2)
    assert_one_line_error(cli("trigger", "greeter", "--id", "-bad id", url=registered, check=False), 2)
    cli("trigger", "greeter", "--id", "dup", url=registered)
    assert_one_line_error(cli("trigger", "greeter", "--id", "dup", url=registered, check=False), 4)
    assert_one_line_error(cli("instances", "list", "greeter", "--status", "sleepy", url=registered, check=False), 2)
    assert_one_line_error(cli("instances", "describe", "greeter", "missing", url=registered, check=False), 3)


def test_bad_values_are_bad_input_whatever_they_name(registered: str) -> None:
    """An id no instance can have, a cursor or count beyond any store's integers, options
    that contradict each other: exit 2, and nothing is created."""
    cli("trigger", "greeter", "--id", "b-1", url=registered)
    for command in ("describe", "pause", "resume", "terminate", "restart", "delete"):
        result = cli("instances", command, "greeter", "bad id!", url=registered, check=False)
        assert_one_line_error(result, 2)
        assert "'bad id!'" in result.stderr
    assert_one_line_error(cli("instances", "describe", "greeter", "x" * 101, url=registered, check=False), 2)
    huge = str(2**63)
    result = cli("instances", "list", "greeter", "--cursor", huge, url=registered, check=False)
    assert_one_line_error(result, 2)
    assert huge in result.stderr
    restart = ("instances", "restart", "greeter", "b-1")
    assert_one_line_error(cli(*restart, "--from-step", "hello", "--count", huge, url=registered, check=False), 2)
    for alone in (("--count", "2"), ("--type", "sleep")):
        result = cli(*restart, *alone, url=registered, check=False)  # not a full restart: a mistake
        assert_one_line_error(result, 2)
        assert alone[0] in result.stderr and "--from-step" in result.stderr
    for timeout in ("-1", "0", "nan", "inf"):
        result = cli("trigger", "greeter", "--id", "t-1", "--wait", "--timeout", timeout, url=registered, check=False)
        assert_one_line_error(result, 2)
        assert "--timeout" in result.stderr
    assert_one_line_error(cli("trigger", "greeter", "--id", "t-1", "--timeout", "5", url=registered, check=False), 2)
    twice = ("trigger", "greeter", '{"who": "a"}', "--params", '{"who": "b"}', "--id", "t-1")
    assert_one_line_error(cli(*twice, url=registered, check=False), 2)
    listed = json.loads(cli("instances", "list", "greeter", "--json", url=registered).stdout)
    assert [row["id"] for row in listed] == ["b-1"]
    described = cli("instances", "describe", "greeter", "b-1", "--json", url=registered)
    assert json.loads(described.stdout)["status"] == "queued"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("instances", "pause", "greeter"), "'ID'"),
        (("instances", "list", "greeter", "--limit", "abc"), "'abc'"),
        (("instances", "lst", "greeter"), "'lst'"),
        (("instances", "list", "greeter", "--bogus"), "'--bogus'"),
        (("bogus",), "'bogus'"),
        (("trigger",), "'WORKFLOW'"),
    ],
    ids=["missing-argument", "bad-integer", "unknown-command", "unknown-option", "unknown-top-command", "no-workflow"],
)
def test_usage_mistakes_are_one_line_errors_naming_the_mistake(
    args: tuple[str, ...], names: str, tmp_path: Path
) -> None:
    result = cli(*args, url=f"sqlite:///{tmp_path / 'cli.db'}", check=False)
    assert_one_line_error(result, 2)
    assert names in result.stderr and "--help" in result.stderr
    assert not (tmp_path / "cli.db").exists()  # a mistake touches no store


def test_app_forms_and_bad_apps(registered: str, tmp_path: Path) -> None:
    assert_one_line_error(cli("worker", str(tmp_path / "missing.py"), url=registered, check=False), 2)
    nothing = cli("worker", f"{APP}:nothing", url=registered, check=False)
    assert_one_line_error(nothing, 2)
    assert "has no attribute 'nothing'" in nothing.stderr
    assert_one_line_error(cli("worker", "no_such_module_here", url=registered, check=False), 2)
    for app in (f"{APP}:other", "tests.cli.app:engine", "tests.cli.app"):
        process = subprocess.Popen([*STEPSTONE, "worker", app, "--db", registered], stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        try:
            assert "ready" in process.stderr.readline()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            process.stderr.close()


def test_db_of_another_kind_of_store_drops_the_options_of_the_apps_own(registered: str, tmp_path: Path) -> None:
    # The app's Engine is made for the other kind of store, with an option only that kind takes.
    own = f'"sqlite:///{tmp_path}/own.db", synchronous="NORMAL"'
    if registered.startswith("sqlite"):
        own = '"postgresql://nobody@127.0.0.1:1/elsewhere", schema="elsewhere"'
    app = tmp_path / "other_kind.py"
    app.write_text(
        "from stepstone import Engine, Workflow\n"
        "class Noop(Workflow):\n"
        "    async def run(self, event, step):\n"
        "        return None\n"
        f"engine = Engine({own}, workflows=[Noop])\n"
    )
    process = subprocess.Popen([*STEPSTONE, "worker", str(app), "--db", registered], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, line + process.stderr.read()
        process.stderr.close()
    assert "ready" in line, line
    assert not (tmp_path / "own.db").exists()


def test_apps_that_cannot_be_imported_are_one_line_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/unused.db"
    (tmp_path / "syntax.py").write_text("engine = None\ndef broken(:\n    pass\n")
    (tmp_path / "imports.py").write_text("import no_such_module_here\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no config\\nfound')\n")
    (tmp_path / "app_syntax").mkdir()
    (tmp_path / "app_syntax" / "__init__.py").write_text("def broken(:\n")
    for app in ("", ":engine", ".relative", "..", "not-a-module"):
        result = cli("worker", app, url=url, check=False)
        assert_one_line_error(result, 2)
        assert f"invalid APP {app!r}" in result.stderr
    syntax = cli("worker", str(tmp_path / "syntax.py"), url=url, check=False)
    assert_one_line_error(syntax, 2)
    assert "syntax.py" in syntax.stderr and "line 2" in syntax.stderr and "SyntaxError" in syntax.stderr
    imports = cli("serve", str(tmp_path / "imports.py"), url=url, check=False)
    assert_one_line_error(imports, 2)
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in imports.stderr
    raises = cli("dev", f"{tmp_path / 'raises.py'}:engine", url=url, check=False)
    assert_one_line_error(raises, 2)
    assert "RuntimeError: no config found" in raises.stderr and "raises.py, line 1" in raises.stderr
    module = cli("worker", "app_syntax:engine", url=url, check=False, cwd=tmp_path)
    assert_one_line_error(module, 2)
    assert "__init__.py" in module.stderr and "line 1" in module.stderr and "SyntaxError" in module.stderr
    # A file named as a module already imported (json: the server's own) would hide that module.
    (tmp_path / "json.py").write_text((Path(APP)).read_text())
    hiding = cli("serve", str(tmp_path / "json.py"), url=url, check=False)
    assert_one_line_error(hiding, 2)
    assert "module name 'json' is taken" in hiding.stderr and "rename the file" in hiding.stderr


@pytest.mark.parametrize("bad", ["directory", "not_a_database"])
def test_a_sqlite_store_that_cannot_be_opened_is_a_one_line_error(bad: str, tmp_path: Path) -> None:
    if bad == "directory":
        path = tmp_path
    else:
        path = tmp_path / "junk.db"
        path.write_text("these are not the pages of a SQLite database\n" * 100)
    url = f"sqlite:///{path}"
    for command in (
        ["workflows", "list", "--db", url],
        ["instances", "list", "greeter", "--db", url],
        ["trigger", "greeter", "{}"],  # the URL from $STEPSTONE_DATABASE_URL
        ["worker", APP, "--db", url],
        ["serve", APP, "--db", url, "--port", "0"],
        ["dev", APP, "--db", url, "--port", "0"],
    ):
        result = cli(*command, url=url, check=False)
        assert_one_line_error(result, 1)
        assert url in result.stderr and str(path) in result.stderr, result.stderr
        assert ("directory" if bad == "directory" else "not a database") in result.stderr


def test_an_unreachable_postgres_store_is_a_one_line_error() -> None:
    url = "postgresql://nobody@127.0.0.1:1/nothing"
    for command in (["workflows", "list"], ["instances", "list", "greeter", "--db", url], ["worker", APP, "--db", url]):
        result = cli(*command, url=url, check=False)
        assert_one_line_error(result, 1)
        assert "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/nothing" in result.stderr


def assert_no_store_is_found(url: str, *named: str) -> None:
    """The commands find no store at `url`: no workflow, or exit 3 with a line naming `named`."""
    assert json.loads(cli("workflows", "list", "--json", url=url).stdout) == []
    commands = (["instances", "list", "greeter"], ["trigger", "greeter"], ["instances", "describe", "greeter", "a"])
    for command in commands:
        result = cli(*command, url=url, check=False)
        assert_one_line_error(result, 3)
        assert all(phrase in result.stderr for phrase in named), result.stderr


def test_commands_on_a_sqlite_file_that_does_not_exist_create_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert_no_store_is_found(url, "no store at", "typo.db")
    query = cli("workflows", "list", url=f"{url}?mode=ro", check=False)
    assert_one_line_error(query, 2)
    assert "?mode=ro" in query.stderr
    assert list(tmp_path.iterdir()) == []


def test_commands_on_a_postgres_database_without_a_store_create_none(bare_pg_url: str) -> None:
    url = bare_pg_url
    assert_no_store_is_found(url, "no store in", "no schema 'stepstone'")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'stepstone'").fetchone() == (0,)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://nobody@127.0.0.1:5432/nothing?bogusparam=1", "bogusparam"),
        ("postgresql://nobody@[::1:5432/nothing", "IPv6"),
        ("postgresql://nobody@127.0.0.1:5432/nothing?connect_timeout=abc", "connect_timeout"),
    ],
)
def test_a_malformed_postgres_url_is_a_one_line_error_naming_it(url: str, named: str) -> None:
    for args in (["workflows", "list"], ["trigger", "greeter"], ["worker", APP]):
        result = cli(*args, "--db", url, url=url, check=False)
        assert_one_line_error(result, 2)  # (libpq's message ends with a newline of its own)
        assert named in result.stderr


def test_db_and_json_may_come_before_the_subcommand(registered: str, tmp_path: Path) -> None:
    elsewhere = f"sqlite:///{tmp_path}/missing-directory/stepstone.db"  # $STEPSTONE_DATABASE_URL: not used
    cli("--db", registered, "trigger", "greeter", "{}", "--id", "early", url=elsewhere)
    for args in (
        ["--db", registered, "--json", "instances", "list", "greeter"],
        ["instances", "--db", registered, "--json", "list", "greeter"],
        ["--json", "instances", "--db", registered, "list", "greeter"],
        ["--db", elsewhere, "instances", "list", "greeter", "--db", registered, "--json"],  # the later one wins
        ["--db", elsewhere, "instances", "--db", registered, "list", "greeter", "--json"],
    ):
        assert [row["id"] for row in json.loads(cli(*args, url=elsewhere).stdout)] == ["early"], args
    workflows = json.loads(cli("workflows", "--json", "--db", registered, "list", url=elsewhere).stdout)
    assert workflows == [{"name": "greeter", "counts": ONE_QUEUED}]
    wrong_last = cli("instances", "--db", registered, "list", "greeter", "--db", elsewhere, url=registered, check=False)
    assert_one_line_error(wrong_last, 3)  # no store there: the later --db was used
    assert "missing-directory" in wrong_last.stderr
    process = subprocess.Popen(
        [*STEPSTONE, "--db", registered, "worker", APP],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STEPSTONE_DATABASE_URL": elsewhere},  # the app's Engine URL, which --db overrides
    )
    assert process.stderr is not None
    try:
        assert "ready" in process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        process.stderr.close()


def test_the_worker_shows_its_store_without_the_password(registered: str) -> None:
    url, parts = registered, urlsplit(registered)
    if parts.scheme == "postgresql":  # (trust auth ignores the password)
        netloc = f"{parts.username or 'postgres'}:s3cret@{parts.hostname}:{parts.port or 5432}"
        url = urlunsplit(parts._replace(netloc=netloc))
    process = subprocess.Popen([*STEPSTONE, "worker", APP, "--db", url], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, line
        process.stderr.close()
    assert "ready" in line and "s3cret" not in line
    assert (parts.hostname or parts.path) in line


def test_trigger_wait_shows_how_the_instance_ended(registered: str, worker: subprocess.Popen[str]) -> None:
    waiting = subprocess.Popen(
        [*STEPSTONE, "trigger", "greeter", '{"who": "di"}', "--id", "w-1", "--wait", "--json", "--db", registered],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_status(registered, "w-1", "waiting")
        cli("instances", "send-event", "greeter", "w-1", "reply", "--payload", '"ok"', url=registered)
    finally:
        out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0
    assert json.loads(out)["output"] == {"greeting": "hello di", "reply": "ok"}


def test_trigger_wait_gives_up_after_its_timeout(registered: str) -> None:
    result = cli("trigger", "greeter", "{}", "--wait", "--timeout", "0.5", url=registered, check=False)
    assert_one_line_error(result, 1)


def test_describe_follow_prints_changes_until_the_instance_ends(registered: str, worker: subprocess.Popen[str]) -> None:
    cli("trigger", "greeter", '{"who": "ed"}', "--id", "f-1", url=registered)
    wait_for_status(registered, "f-1", "waiting")
    following = subprocess.Popen(
        [*STEPSTONE, "instances", "describe", "greeter", "f-1", "--follow", "--json", "--db", registered],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert following.stdout is not None
    try:
        assert json.loads(following.stdout.readline())["status"] == "waiting"
        cli("instances", "send-event", "greeter", "f-1", "reply", "--payload", "1", url=registered)
    finally:
        out, _ = following.communicate(timeout=30)
    assert following.returncode == 0
    assert '"status": "complete"' in out


def test_terminate_all_ends_every_unfinished_instance(registered: str) -> None:
    for name in ("t-1", "t-2", "t-3"):
        cli("trigger", "greeter", "{}", "--id", name, url=registered)
    cli("instances", "pause", "greeter", "t-3", url=registered)
    assert json.loads(cli("instances", "terminate-all", "greeter", "--json", url=registered).stdout) == {
        "terminated": 3
    }
    listed = json.loads(cli("instances", "list", "greeter", "--json", url=registered).stdout)
    assert {row["status"] for row in listed} == {"terminated"}
