"""`subledger`: the one command-line entry point.

Every failure ends in one line on stderr naming the problem and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import NoReturn

from redis import Redis, RedisError
from sqlalchemy.exc import SQLAlchemyError

from ledger.db import Database
from ledger.errors import SubledgerError
from ledger.logs import configure_logging
from ledger.models import RunStatus
from ledger.settings import Settings, load_settings
from worker.runs import RunReport, one_line

log = logging.getLogger("subledger")


class CommandError(SubledgerError, RuntimeError):
    """A command cannot do its work; the message is shown as it is."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"subledger: {message} (see `{self.prog} --help`)\n")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _settings() -> Settings:
    return load_settings()


@contextmanager
def redis_connection(settings: Settings) -> Iterator[tuple[Redis, bool]]:
    """Redis from REDIS_URL, or an embedded server for a local run (True when embedded)."""
    if settings.redis_url:
        connection = Redis.from_url(settings.redis_url)
        try:
            connection.ping()
        except RedisError as exc:
            raise CommandError(f"Redis at REDIS_URL does not answer ({type(exc).__name__})") from None
        try:
            yield connection, False
        finally:
            connection.close()
        return
    from worker.embedded import embedded_redis

    with embedded_redis() as url:
        connection = Redis.from_url(url)
        try:
            yield connection, True
        finally:
            connection.close()


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    """The ledger database; its connections are closed when the command is done."""
    db = Database(settings.database_url)
    try:
        yield db
    finally:
        db.dispose()


def _require_redis_url(settings: Settings, what: str) -> str:
    if not settings.redis_url:
        raise CommandError(
            f"REDIS_URL is not set: a {what} must share Redis with the web process "
            "(`subledger serve` runs everything locally on an embedded Redis)"
        )
    return settings.redis_url


def cmd_db(args: argparse.Namespace) -> int:
    from ledger import migrate

    settings = _settings()
    with _database(settings) as db:
        if args.action == "upgrade":
            migrate.upgrade(db.engine, args.revision or "head")
        elif args.action == "downgrade":
            if not args.revision:
                raise CommandError("db downgrade needs a revision (e.g. `base`)")
            migrate.downgrade(db.engine, args.revision)
        print(f"database at revision {migrate.current_revision(db.engine) or 'base'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from rq import SimpleWorker, Worker

    # Loaded once here, so each forked work horse starts with the job code imported.
    importlib.import_module("worker.jobs")
    from worker.queues import worker_queues

    settings = _settings()
    connection = Redis.from_url(_require_redis_url(settings, "worker"))
    worker_class = SimpleWorker if args.simple else Worker
    rq_worker = worker_class(worker_queues(connection), connection=connection)
    rq_worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")
    return 0


def cmd_clock(args: argparse.Namespace) -> int:
    from worker.clock import run_clock

    settings = _settings()
    run_clock(Redis.from_url(_require_redis_url(settings, "clock")), settings)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings()
    since = datetime.combine(args.since, datetime.min.time(), UTC) if args.since else None
    with _database(settings) as db:
        return _replay(db, settings, failed_only=args.failed, since=since)


def _replay(db: Database, settings: Settings, *, failed_only: bool, since: datetime | None) -> int:
    from worker import replay

    count, shards = replay.mark_for_replay(db, failed_only=failed_only, since=since)
    if count == 0:
        print("nothing to replay")
        return 0
    with redis_connection(settings) as (connection, embedded):
        if embedded:
            # No shared queue: process the events here and now.
            report = replay.process_now(db, settings)
            # An event that failed again is left pending for a later retry: still a failure here.
            failed = report.failed + report.retrying
            print(f"replayed {count} events: {report.processed} processed, {failed} failed")
            return 1 if failed else 0
        for shard in shards:
            replay.wake(connection, shard)
    print(f"re-queued {count} events on {len(shards)} shards")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from worker.rebuild import rebuild

    settings = _settings()
    with _database(settings) as db, Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("recomputing customers", total=None)
        report = rebuild(
            db,
            settings,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print(
        f"rebuilt {report.customers} customers with rules {settings.rules.version}: "
        f"{report.movements_added} movements added, {report.movements_removed} removed"
    )
    for problem in report.problems:
        print(f"  not rebuilt: {problem}")
    return 1 if report.problems else 0


def _require_api_key(settings: Settings, command: str) -> None:
    if not settings.stripe_api_key:
        raise CommandError(f"STRIPE_API_KEY is not set: {command} reads from the Stripe API")


def _report_run(report: RunReport) -> int:
    """Print the run's summary; a partial or failed run also gets one line on stderr."""
    print(report.summary)
    if report.status is RunStatus.OK:
        return 0
    why = report.errors[0] if report.errors else "see the run's errors"
    print(f"subledger: {report.kind} {report.status.value}: {why}", file=sys.stderr)
    return 1


def cmd_backfill(args: argparse.Namespace) -> int:
    from worker.backfill import backfill
    from worker.progress import progress_reporter

    settings = _settings()
    _require_api_key(settings, "backfill")
    since = datetime.combine(args.since, datetime.min.time(), UTC) if args.since else None
    db = Database(settings.database_url)
    try:
        with progress_reporter() as progress:
            return _report_run(backfill(db, settings, since=since, progress=progress))
    finally:
        db.dispose()


def cmd_reconcile(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from ledger.models import DriftItem
    from webapp.report import money
    from worker.reconcile import reconcile

    settings = _settings()
    _require_api_key(settings, "reconcile")
    db = Database(settings.database_url)
    try:
        report = reconcile(db, settings)
        status = _report_run(report)
        with db.session() as session:
            drift = session.scalars(select(DriftItem).where(DriftItem.run_id == report.run_id).order_by(DriftItem.id))
            for item in drift:
                print(
                    f"  {item.subscription_id} ({item.customer_id}): ledger {money(item.ledger_mrr, item.currency)}, "
                    f"Stripe {money(item.stripe_mrr, item.currency)} → {item.action}"
                )
        return status
    finally:
        db.dispose()


def _month(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a month (YYYY-MM)") from None


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ledger.db import utcnow
    from ledger.fx import RatesInfo, configured_rates
    from ledger.summary import MissingRates, MonthNotStarted, account_currencies, account_summary, default_livemode
    from webapp.report import render_csv, render_json, render_table

    settings = _settings()
    today = utcnow().date()
    month = args.month or today.replace(day=1)
    rates = configured_rates(settings)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            livemode = default_livemode(session, settings.livemode)
            summaries = account_summary(
                session,
                livemode=livemode,
                month=month,
                rates=rates,
                reporting_currency=settings.reporting_currency,
                today=today,
            )
            converted = rates is not None and len(account_currencies(session, livemode=livemode)) > 1
    except MissingRates as exc:
        raise CommandError(f"{rates.source if rates else 'FX_RATES_FILE'} lacks rates for {exc}") from None
    except MonthNotStarted as exc:
        raise CommandError(f"--month: {exc}") from None
    finally:
        db.dispose()
    if args.format == "json":
        print(render_json(summaries))
    elif args.format == "csv":
        print(render_csv(summaries), end="")
    else:
        render_table(summaries, Console())
    if converted and rates is not None:
        info = RatesInfo.of(rates, today)
        if args.format == "table":
            print(f"Converted to {settings.reporting_currency.upper()} at {info.source}, newest rate {info.last_date}.")
        if info.warning:
            print(f"warning: {info.warning}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.local import serve

    return serve(_settings(), port=args.port, workers=args.workers)


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number above 0")
    return int(value)


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from worker import demo

    if args.export:
        return demo.export_account(Path(args.export), customers=args.customers, seed=args.seed)
    return demo.run_demo(
        os.environ,
        directory=Path(args.dir),
        customers=args.customers,
        seed=args.seed,
        port=args.port,
        live=not args.no_live,
        workers=args.workers,
        fx=not args.no_fx,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="subledger", description="Subscription analytics for Stripe.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = commands.add_parser("db", help="database migrations")
    db.add_argument("action", choices=("upgrade", "downgrade", "current"))
    db.add_argument("revision", nargs="?", help="target revision (default: head)")
    db.set_defaults(handler=cmd_db)

    worker = commands.add_parser("worker", help="run an RQ worker (needs REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--simple", action="store_true", help="run jobs in this process (no fork)")
    worker.set_defaults(handler=cmd_worker)

    clock = commands.add_parser("clock", help="run the cron scheduler: sweeper and nightly reconcile")
    clock.set_defaults(handler=cmd_clock)

    replay = commands.add_parser("replay", help="re-queue stored events")
    replay.add_argument("--failed", action="store_true", help="only events that failed")
    replay.add_argument("--since", type=_date, help="only events created on or after DATE (YYYY-MM-DD)")
    replay.set_defaults(handler=cmd_replay)

    backfill = commands.add_parser("backfill", help="import history from Stripe (resumable)")
    backfill.add_argument("--since", type=_date, help="only objects created on or after DATE (YYYY-MM-DD)")
    backfill.set_defaults(handler=cmd_backfill)

    reconcile = commands.add_parser("reconcile", help="compare the ledger with Stripe now; correct and report drift")
    reconcile.set_defaults(handler=cmd_reconcile)

    rebuild = commands.add_parser("rebuild", help="recompute the ledger from stored data (after a rule change)")
    rebuild.set_defaults(handler=cmd_rebuild)

    report = commands.add_parser("report", help="the month's KPIs and movement bridge")
    report.add_argument("--month", type=_month, help="YYYY-MM (default: this month)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.set_defaults(handler=cmd_report)

    serve = commands.add_parser("serve", help="web, worker and clock on this machine (embedded Redis)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=2, help="worker processes")
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser("demo", help="the whole system fed by a synthetic Stripe account (no Stripe needed)")
    demo.add_argument("--customers", type=_positive, default=300, help="size of the account (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="the same seed gives the same account (default 0)")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--workers", type=_positive, default=2, help="worker processes")
    demo.add_argument("--no-live", action="store_true", help="deliver the history only, no live activity")
    demo.add_argument("--no-fx", action="store_true", help="no FX rates: MRR reported per currency")
    demo.add_argument("--dir", default="subledger-demo", help="demo directory (default ./subledger-demo)")
    demo.add_argument("--export", metavar="DIR", help="write the account as JSON files in DIR and start nothing")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Libraries log at WARNING: their INFO chatter (alembic's plugin set-up at import)
    # would otherwise come before the one line a failure prints.
    configure_logging(("subledger", "rq", "alembic.runtime.migration"))
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SubledgerError as exc:
        lines = str(exc).strip().splitlines()
        print(f"subledger: {lines[0] if lines else type(exc).__name__}", file=sys.stderr)
    except SQLAlchemyError as exc:
        print(f"subledger: database error: {one_line(exc)}", file=sys.stderr)
    except RedisError as exc:
        print(f"subledger: Redis error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("subledger: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
