"""A whole synthetic account through the real system, compared with the truth the simulator recorded.

    python bench/account_replay.py --customers 150 --months 12 --seed 1 --mode shuffled

The account comes from `worker.synthetic` (the simulator shared with the demo
and the tests), which records every customer's true MRR on every day under
docs/mrr-rules.md. The real processes run on this machine: the web process
(gunicorn), two RQ workers and the clock, on the PostgreSQL and Redis named by
`--database-url` / `--redis-url` (a fresh database is created and dropped by
default), with a fake Stripe API (`fake_stripe.AccountStripe`) serving the
account's final objects and the last 30 days of its events. Then the account
is delivered in one of four modes:

- `ordered`: every event once, in order (catalog first; a customer's events
  on one connection, in order; four connections);
- `shuffled`: every event in a random order, 10% of them delivered twice,
  over 8 connections;
- `dropped`: `ordered` with 10% of the webhooks never delivered; once the
  repairs the workers queued for paid invoices that contradict the ledger
  have run, the ledger is scored ("before reconcile"), then
  `subledger reconcile`;
- `backfill`: no webhooks; `subledger backfill` on the empty database.

Once the workers are idle, the ledger is read back through the API
(`/api/v1/mrr`, `/api/v1/movements`) and compared with the truth: days whose
MRR is exact (per currency), (month, movement type, currency) sums exact,
customer-days exact, movements matched, customers whose final MRR is exact;
the customers that differ most are listed with the events behind them. The
last line is exactly

    replay MODE: days X%, monthly sums Y%, customer-days Z%, final A/B

and the exit status is 1 when a figure is below its floor (`--floor-*`;
100% for `ordered` and `shuffled`, which must be exact, and where no event may
need a retry (`--max-retries`)).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import requests
from fake_stripe import AccountStripe, Server
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from ledger.db import Database
from ledger.models import StripeEvent, SyncRun, WaitingCustomer
from ledger.settings import load_settings
from worker.demo import DEMO_RULES, WebhookSender, deliver
from worker.local import ProcessGroup, local_system
from worker.synthetic import Behaviour, SyntheticAccount, generate_account

MODES = ("ordered", "shuffled", "dropped", "backfill")
ACCOUNTS = {"default": Behaviour, "all-invoiced": Behaviour.all_invoiced}
"""The accounts a replay can simulate (`worker.synthetic.Behaviour`)."""
SHUFFLED_DUPLICATES = 0.10
SHUFFLED_CONNECTIONS = 8
ORDERED_CONNECTIONS = 4
DROPPED_SHARE = 0.10
WORKERS = 2
SETTLE_S = 5.0
"""Events still pending after this long without progress are counted as stuck (they wait for a retry)."""
DRAIN_TIMEOUT_S = 1800.0
WORST_SHOWN = 5

CustomerSeries = dict[str, list[tuple[date, str, int]]]
"""Per customer: change points (day, currency, MRR at the end of that day on)."""


# --- the account and its truth --------------------------------------------------------------


def true_movements(series: CustomerSeries) -> list[tuple[str, date, str, str, int]]:
    """(customer, day, currency, type, amount) by docs/mrr-rules.md §6, day netting, from end-of-day MRR.

    Written here from the rules, not taken from the ledger: new when the
    customer never had MRR > 0 at an earlier day's end (in any currency),
    reactivation when it had; expansion, contraction, churn by the sign.
    """
    found = []
    for customer, points in series.items():
        current: dict[str, int] = {}
        paid_before = False
        by_day: dict[date, list[tuple[str, int]]] = defaultdict(list)
        for day, currency, mrr in points:
            by_day[day].append((currency, mrr))
        for day in sorted(by_day):
            before = dict(current)
            for currency, mrr in by_day[day]:
                current[currency] = mrr
            for currency in sorted({c for c, _ in by_day[day]}):
                prev, cur = before.get(currency, 0), current.get(currency, 0)
                if prev == cur:
                    continue
                if prev == 0:
                    kind = "reactivation" if paid_before else "new"
                elif cur == 0:
                    kind = "churn"
                else:
                    kind = "expansion" if cur > prev else "contraction"
                found.append((customer, day, currency, kind, cur - prev))
            paid_before = paid_before or any(v > 0 for v in current.values())
    return found


def ledger_series(movements: Sequence[Mapping[str, Any]]) -> CustomerSeries:
    """Per customer, the end-of-day MRR the ledger's movements add up to (MRR = Σ movements, §6)."""
    running: dict[tuple[str, str], int] = defaultdict(int)
    series: CustomerSeries = defaultdict(list)
    for movement in sorted(movements, key=lambda m: (m["customer"], m["date"], m["currency"])):
        key = (movement["customer"], movement["currency"])
        running[key] += movement["amount"]
        points = series[movement["customer"]]
        day = date.fromisoformat(movement["date"])
        if points and points[-1][:2] == (day, movement["currency"]):
            points[-1] = (day, movement["currency"], running[key])
        else:
            points.append((day, movement["currency"], running[key]))
    return dict(series)


def _value_runs(points: Sequence[tuple[date, str, int]], first: date, last: date) -> list[tuple[date, dict[str, int]]]:
    """From each change day on, the MRR per currency (non-zero ones), clipped to [first, last]."""
    state: dict[str, int] = {}
    runs: list[tuple[date, dict[str, int]]] = [(first, {})]
    for day, currency, mrr in sorted(points):
        state[currency] = mrr
        snapshot = {c: v for c, v in state.items() if v}
        day = max(day, first)
        if runs[-1][0] == day:
            runs[-1] = (day, snapshot)
        else:
            runs.append((day, snapshot))
    return [(day, values) for day, values in runs if day <= last]


@dataclass
class CustomerScore:
    days: int = 0
    exact_days: int = 0
    error: int = 0
    """Σ over days of the absolute difference (minor units, all currencies)."""
    first_wrong: date | None = None
    final_truth: dict[str, int] = field(default_factory=dict)
    final_ledger: dict[str, int] = field(default_factory=dict)


def score_customer(
    truth: Sequence[tuple[date, str, int]], ledger: Sequence[tuple[date, str, int]], first: date, last: date
) -> CustomerScore:
    """Compare two step series day by day over [the customer's first non-zero day, last]."""
    true_runs, ledger_runs = _value_runs(truth, first, last), _value_runs(ledger, first, last)
    changes = sorted({day for day, _ in true_runs} | {day for day, _ in ledger_runs} | {last + timedelta(days=1)})
    score = CustomerScore()
    t = g = 0
    started = False
    for start, end in itertools.pairwise(changes):
        while t + 1 < len(true_runs) and true_runs[t + 1][0] <= start:
            t += 1
        while g + 1 < len(ledger_runs) and ledger_runs[g + 1][0] <= start:
            g += 1
        expected, got = true_runs[t][1], ledger_runs[g][1]
        started = started or bool(expected) or bool(got)
        if not started:
            continue
        length = (end - start).days
        score.days += length
        if expected == got:
            score.exact_days += length
        else:
            score.first_wrong = score.first_wrong or start
            diff = sum(abs(expected.get(c, 0) - got.get(c, 0)) for c in expected.keys() | got.keys())
            score.error += diff * length
    score.final_truth, score.final_ledger = true_runs[t][1], ledger_runs[g][1]
    return score


@dataclass
class Figures:
    mode: str
    days: tuple[int, int]
    monthly_sums: tuple[int, int]
    customer_days: tuple[int, int]
    movements: tuple[int, int, int]
    """(matched, true, ledger)."""
    final: tuple[int, int]
    retried: int
    stuck: int
    worst: list[tuple[str, CustomerScore]]
    errors: int = 0
    """Errors the reconcile or backfill listed."""
    redrifted: int = 0
    """Subscriptions a second reconcile found drifting (dropped)."""

    @staticmethod
    def percent(pair: tuple[int, int]) -> float:
        return 100.0 * pair[0] / pair[1] if pair[1] else 100.0

    def last_line(self) -> str:
        return (
            f"replay {self.mode}: days {self.percent(self.days):.1f}%, "
            f"monthly sums {self.percent(self.monthly_sums):.1f}%, "
            f"customer-days {self.percent(self.customer_days):.1f}%, final {self.final[0]}/{self.final[1]}"
        )


def compare(
    mode: str,
    truth: CustomerSeries,
    movements: Sequence[Mapping[str, Any]],
    daily: Mapping[str, Mapping[date, int]],
    *,
    first: date,
    last: date,
) -> Figures:
    """Every figure of the report, from the truth and what the API answered."""
    ledger = ledger_series(movements)
    true_daily: dict[str, dict[date, int]] = defaultdict(dict)
    for points in truth.values():
        for day, currency, _ in points:
            true_daily[currency].setdefault(max(day, first), 0)
    currencies = sorted(set(true_daily) | set(daily))
    exact_days = total_days = 0
    expected_by_currency = _account_series(truth, first, last)
    for currency in currencies:
        for offset in range((last - first).days + 1):
            day = first + timedelta(days=offset)
            total_days += 1
            exact_days += expected_by_currency[currency].get(day, 0) == daily.get(currency, {}).get(day, 0)

    expected_moves = true_movements(truth)
    got_moves = [
        (m["customer"], date.fromisoformat(m["date"]), m["currency"], m["type"], m["amount"]) for m in movements
    ]
    expected_count, got_count = Counter(expected_moves), Counter(got_moves)
    matched = sum((expected_count & got_count).values())
    sums_expected: Counter[tuple[str, str, str]] = Counter()
    sums_got: Counter[tuple[str, str, str]] = Counter()
    for counter, moves in ((sums_expected, expected_moves), (sums_got, got_moves)):
        for _, day, currency, kind, amount in moves:
            counter[(day.strftime("%Y-%m"), kind, currency)] += amount
    keys = {k for k, v in sums_expected.items() if v} | {k for k, v in sums_got.items() if v}
    exact_sums = sum(sums_expected[k] == sums_got[k] for k in keys)

    scores = {
        customer: score_customer(truth.get(customer, []), ledger.get(customer, []), first, last)
        for customer in sorted(set(truth) | set(ledger))
    }
    customer_days = (sum(s.exact_days for s in scores.values()), sum(s.days for s in scores.values()))
    final = (sum(s.final_truth == s.final_ledger for s in scores.values()), len(scores))
    # A wrong final MRR first: what the dashboard shows today.
    worst = sorted(
        ((c, s) for c, s in scores.items() if s.error),
        key=lambda pair: (pair[1].final_truth == pair[1].final_ledger, -pair[1].error),
    )
    return Figures(
        mode=mode,
        days=(exact_days, total_days),
        monthly_sums=(exact_sums, len(keys)),
        customer_days=customer_days,
        movements=(matched, len(expected_moves), len(got_moves)),
        final=final,
        retried=0,
        stuck=0,
        worst=worst[:WORST_SHOWN],
    )


def _account_series(truth: CustomerSeries, first: date, last: date) -> dict[str, dict[date, int]]:
    """Per currency, per day of [first, last]: the sum of the customers' true MRR."""
    deltas: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for points in truth.values():
        previous: dict[str, int] = {}
        for day, currency, mrr in sorted(points):
            deltas[currency][max(day, first)] += mrr - previous.get(currency, 0)
            previous[currency] = mrr
    series: dict[str, dict[date, int]] = {}
    for currency, per_day in deltas.items():
        running = 0
        series[currency] = {}
        for offset in range((last - first).days + 1):
            day = first + timedelta(days=offset)
            running += per_day.get(day, 0)
            series[currency][day] = running
    return series


# --- running the system ---------------------------------------------------------------------


@contextmanager
def fresh_database(url: str | None) -> Iterator[str]:
    """The database URL to use: `url` as given, or a new PostgreSQL database dropped afterwards."""
    if url:
        yield url
        return
    name = f"subledger_replay_{os.getpid()}"
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


WAITING = "waiting customers"
"""The key of `event_status`'s counts for customers whose ledger waits for an object (not an event status)."""


def event_status(db: Database) -> tuple[dict[str, int], int]:
    """Stored events by status (and the customers waiting), and how many events needed more than one attempt."""
    with db.session() as session:
        counts = dict(session.execute(select(StripeEvent.status, func.count()).group_by(StripeEvent.status)).all())
        retried = session.scalar(select(func.count()).select_from(StripeEvent).where(StripeEvent.attempts > 1))
        waiting = session.scalar(select(func.count()).select_from(WaitingCustomer))
    found = {str(k): int(v) for k, v in counts.items()}
    if waiting:
        found[WAITING] = int(waiting)
    return found, int(retried or 0)


def _check_running(group: ProcessGroup) -> None:
    """Stop the replay, naming it, when a process of the system has exited."""
    if exited := group.exited():
        raise SystemExit(f"replay: the {exited[0][0]} process exited with status {exited[0][1]}")


def wait_idle(db: Database, group: ProcessGroup, *, expected: int) -> tuple[dict[str, int], int]:
    """Until every stored event is processed, or what is left has made no progress for a while."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last_change, last = time.monotonic(), None
    while time.monotonic() < deadline:
        _check_running(group)
        counts, retried = event_status(db)
        pending = counts.get("pending", 0) + counts.get(WAITING, 0)
        if pending == 0 and sum(counts.values()) >= expected:
            return counts, retried
        if counts != last:
            last, last_change = counts, time.monotonic()
        elif pending and time.monotonic() - last_change > SETTLE_S + 60:
            return counts, retried
        time.sleep(0.5)
    return event_status(db)


def wait_repairs(db: Database, redis_url: str, group: ProcessGroup) -> int:
    """Until the repairs the workers queued for paid invoices that contradicted the ledger have run (they
    are queued REPAIR_DELAY_S late); how many ran."""
    from redis import Redis
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from worker.queues import worker_queues

    queues = worker_queues(Redis.from_url(redis_url))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_running(group)
        busy = sum(
            jobs.count + ScheduledJobRegistry(queue=jobs).count + StartedJobRegistry(queue=jobs).count
            for jobs in queues
        )
        if not busy:
            break
        time.sleep(1)
    wait_idle(db, group, expected=0)
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(SyncRun).where(SyncRun.kind == "repair")) or 0)


def run_cli(env: Mapping[str, str], log: IO[bytes], *args: str) -> str:
    """`subledger ARGS` as a user runs it: its report (standard output); its log lines go to `log`."""
    executable = os.path.join(os.path.dirname(sys.executable), "subledger")
    done = subprocess.run([executable, *args], env=dict(env), capture_output=True, timeout=3600)
    log.write(done.stderr)
    output = done.stdout.decode(errors="replace")
    # 1 with a report is a run that ended partial (its report names what it could not do); without
    # one, the command failed, and scoring what it left would hide why.
    if done.returncode not in (0, 1) or (done.returncode == 1 and not output.strip()):
        error = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SystemExit(f"replay: subledger {' '.join(args)} failed ({done.returncode}): {error[0]}{output}")
    return output


def api_get(url: str, token: str, path: str, **params: Any) -> Any:
    response = requests.get(f"{url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    response.raise_for_status()
    return response.json()


def read_ledger(
    url: str, token: str, first: date, last: date
) -> tuple[list[dict[str, Any]], dict[str, dict[date, int]]]:
    """Every movement, and the daily MRR per currency, as the API answers them."""
    movements: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = api_get(url, token, "/api/v1/movements", **params)
        movements.extend(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    answer = api_get(url, token, "/api/v1/mrr", interval="day", start=first.isoformat(), end=last.isoformat())
    series = answer["by_currency"] if answer.get("currency") is None else [answer]
    daily = {s["currency"]: {date.fromisoformat(p["date"]): p["mrr"] or 0 for p in s["points"]} for s in series if s}
    return movements, daily


def shuffled(events: Sequence[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Every event in a random order, 10% of them twice."""
    result = list(events) + rng.sample(list(events), int(len(events) * SHUFFLED_DUPLICATES))
    rng.shuffle(result)
    return result


def deliver_all(sender: WebhookSender, events: Sequence[dict[str, Any]], connections: int) -> None:
    """Events in the given order over `connections` connections taking from one queue."""
    work: queue.Queue[dict[str, Any] | None] = queue.Queue()
    for event in events:
        work.put(event)
    errors: list[BaseException] = []

    def run() -> None:
        while (event := work.get()) is not None:
            try:
                sender.send(event)
            except Exception as exc:  # reported below, once every connection has stopped
                errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(connections)]
    for thread in threads:
        work.put(None)
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"replay: delivery failed: {errors[0]}")


CATALOG = ("product", "price", "plan", "coupon")


def _ordered(sender: WebhookSender, events: Sequence[dict[str, Any]]) -> None:
    """The catalog as it was first published, on one connection; then everything else in order, a
    customer's events on one connection (a deleted coupon's event comes when it happened)."""
    first = [e for e in events if e["type"].split(".")[0] in CATALOG and not e["type"].endswith(".deleted")]
    rest = [e for e in events if e["type"].split(".")[0] not in CATALOG or e["type"].endswith(".deleted")]
    deliver_all(sender, first, 1)
    deliver(sender, rest, threads=ORDERED_CONNECTIONS, on_progress=lambda _: None, check=lambda: None)


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started


def replay(args: argparse.Namespace) -> Figures:
    timings = Timings()
    rng = random.Random(args.seed)
    with timings.phase("generate"):
        account: SyntheticAccount = generate_account(
            customers=args.customers,
            seed=args.seed,
            months=args.months,
            now=args.now,
            behaviour=ACCOUNTS[args.account](),
        )
        events = account.events()
        truth: CustomerSeries = account.expected_customer_mrr()
    now = datetime.fromtimestamp(account.now, UTC)
    first, last = datetime.fromtimestamp(account.start, UTC).date(), now.date()
    print(
        f"account: {args.account}, {args.customers} customers, {args.months} months, seed {args.seed}, "
        f"now {now.isoformat(timespec='seconds')}: {len(events)} events"
    )

    log_start = args.log.stat().st_size if args.log.exists() else 0
    token, secret = secrets.token_urlsafe(24), "whsec_" + secrets.token_hex(16)
    fake = Server(AccountStripe(account.objects(), events, now=account.now, latency=args.latency)).start()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with fresh_database(args.database_url) as database_url:
        env = {
            **os.environ,
            **DEMO_RULES,
            "DATABASE_URL": database_url,
            "REDIS_URL": args.redis_url,
            "STRIPE_WEBHOOK_SECRET": secret,
            "SUBLEDGER_API_TOKEN": token,
            "STRIPE_API_KEY": "sk_test_replay",
            "STRIPE_API_BASE": fake.url,
            "FX_RATES_FILE": "",
            "FX_REFERENCE_RATES": "off",  # each currency apart, as the simulator records it
            "REPORTING_CURRENCY": "usd",
        }
        _flush_redis(args.redis_url)
        settings = load_settings(env, dotenv=False)
        db = Database(database_url)
        with (
            args.log.open("ab") as log,
            local_system(settings, port=port, workers=WORKERS, env=env, output=log) as group,
        ):
            _wait_healthy(url, group)
            sender = WebhookSender(f"{url}/webhooks/stripe", secret)
            delivered: list[dict[str, Any]] = []
            with timings.phase("delivery"):
                if args.mode == "ordered":
                    delivered = events
                    _ordered(sender, delivered)
                elif args.mode == "shuffled":
                    delivered = shuffled(events, rng)
                    deliver_all(sender, delivered, SHUFFLED_CONNECTIONS)
                elif args.mode == "dropped":
                    dropped = set(rng.sample(range(len(events)), int(len(events) * DROPPED_SHARE)))
                    delivered = [e for i, e in enumerate(events) if i not in dropped]
                    _ordered(sender, delivered)
            unique = len({e["id"] for e in delivered})
            counts: dict[str, int] = {}
            retried = 0
            if delivered:  # a backfill starts at once: the clock's events catch-up runs beside it
                with timings.phase("drain"):
                    counts, retried = wait_idle(db, group, expected=unique)
            print(f"delivered {len(delivered)} webhooks ({unique} distinct); events: {counts}; retried {retried}")
            if args.mode == "dropped":
                with timings.phase("repairs"):
                    repairs = wait_repairs(db, args.redis_url, group)
                movements, daily = read_ledger(url, token, first, last)
                before = compare(args.mode, truth, movements, daily, first=first, last=last)
                print(f"before reconcile, after {repairs} repair runs: {before.last_line().split(': ', 1)[1]}")
                with timings.phase("reconcile"):
                    output = run_cli(env, log, "reconcile")
                    counts, retried = wait_idle(db, group, expected=0)
                _print_head(output)
            elif args.mode == "backfill":
                # The clock's first events catch-up runs beside it, as when a user starts subledger and
                # then imports the history.
                with timings.phase("backfill"):
                    output = run_cli(env, log, "backfill")
                    counts, retried = wait_idle(db, group, expected=0)
                _print_head(output)
            with timings.phase("scoring"):
                movements, daily = read_ledger(url, token, first, last)
                figures = compare(args.mode, truth, movements, daily, first=first, last=last)
                figures.retried = retried
                figures.stuck = counts.get("pending", 0) + counts.get("failed", 0) + counts.get(WAITING, 0)
            if args.mode in ("dropped", "backfill"):
                figures.errors = _counted(output, "errors")
            if args.mode == "dropped":  # §9: running it twice in a row changes nothing the second time
                again = run_cli(env, log, "reconcile")
                figures.redrifted = _counted(again, "drifted")
                print(f"a second reconcile: {figures.redrifted} drifted")
        db.dispose()
    fake.close()
    _print_report(figures, account, events, timings, delivered=len(delivered), log=args.log, log_start=log_start)
    return figures


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _flush_redis(url: str) -> None:
    from redis import Redis

    Redis.from_url(url).flushdb()


def _wait_healthy(url: str, group: ProcessGroup) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _check_running(group)
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"replay: {url}/healthz did not answer within 60 s")


def _counted(output: str, what: str) -> int:
    """A count from a run's summary line (`… 3 drifted, …`, `…; 2 errors (first: …)`); 0 when absent."""
    found = re.search(rf"([\d,]+) {what}\b", output.split("\n", 1)[0])
    return int(found.group(1).replace(",", "")) if found else 0


def _print_head(output: str, lines: int = 8) -> None:
    shown = output.strip().splitlines()
    for line in shown[:lines]:
        print(f"  | {line}")
    if len(shown) > lines:
        print(f"  | … {len(shown) - lines} more lines")


def _print_report(
    figures: Figures,
    account: SyntheticAccount,
    events: Sequence[dict[str, Any]],
    timings: Timings,
    *,
    delivered: int,
    log: Path,
    log_start: int,
) -> None:
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.phases.items())
    rate = delivered / timings.phases["delivery"] if delivered and timings.phases.get("delivery") else None
    print(f"phases: {phases}" + (f"; {rate:,.0f} events/s delivered" if rate else ""))
    matched, expected, got = figures.movements
    print(f"days exact (per currency): {figures.days[0]}/{figures.days[1]}")
    print(f"monthly sums exact (month, type, currency): {figures.monthly_sums[0]}/{figures.monthly_sums[1]}")
    print(f"customer-days exact: {figures.customer_days[0]}/{figures.customer_days[1]}")
    print(f"movements matched: {matched}/{expected} (the ledger has {got})")
    print(
        f"events needing a retry: {figures.retried}; "
        f"left pending or failed (events), or waiting (customers): {figures.stuck}"
    )
    for error, count in retry_causes(log, log_start).most_common(WORST_SHOWN):
        print(f"  {count} × {error}")
    limits = account.history_limits()
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    worst = {customer for customer, _ in figures.worst}
    for event in events:
        obj = event["data"]["object"]
        customer = obj.get("customer") if obj.get("object") != "customer" else obj.get("id")
        if customer in worst:
            by_customer[customer].append(event)
    for customer, score in figures.worst:
        print(
            f"  {customer}: {score.exact_days}/{score.days} days exact, first wrong {score.first_wrong}; "
            f"final truth {score.final_truth or 0}, ledger {score.final_ledger or 0}"
        )
        for reason in limits.get(customer, []):
            print(f"    no record shows: {reason}")
        around = [e for e in by_customer[customer] if score.first_wrong is None or _day(e) >= score.first_wrong]
        for event in around[:6]:
            print(f"    {_day(event)} {event['type']} {event['id']}")
    print(figures.last_line())


def retry_causes(log: Path, start: int = 0) -> Counter[str]:
    """Why events failed and waited for a retry, from the workers' log lines written from byte `start` on
    (the log is appended to, run after run)."""
    causes: Counter[str] = Counter()
    with log.open("rb") as written:
        written.seek(start)
        for line in written.read().decode(errors="replace").splitlines():
            if '"event failed' not in line:
                continue
            with suppress(ValueError):
                causes[re.sub(r"\b(cus|sub|di|evt|in|price|co)_\w+", r"\1_…", json.loads(line)["error"])] += 1
    return causes


def _day(event: Mapping[str, Any]) -> date:
    return datetime.fromtimestamp(event["created"], UTC).date()


def below_floors(figures: Figures, args: argparse.Namespace) -> list[str]:
    exact = args.mode in ("ordered", "shuffled")
    floors = {
        "days": (figures.days, 100.0 if exact else args.floor_days),
        "monthly sums": (figures.monthly_sums, 100.0 if exact else args.floor_sums),
        "customer-days": (figures.customer_days, 100.0 if exact else args.floor_customer_days),
        "final": (figures.final, 100.0 if exact else args.floor_final),
    }
    failures = [
        f"{name} {Figures.percent(pair):.2f}% < {floor}%"
        for name, (pair, floor) in floors.items()
        if Figures.percent(pair) < floor
    ]
    if exact and figures.retried > args.max_retries:
        failures.append(f"{figures.retried} events needed a retry (at most {args.max_retries})")
    if args.max_errors is not None and figures.errors > args.max_errors:
        failures.append(f"the {args.mode} run listed {figures.errors} errors (at most {args.max_errors})")
    if figures.redrifted:
        failures.append(f"a second reconcile found {figures.redrifted} subscriptions drifting (0 expected)")
    return failures


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=150)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument(
        "--account",
        choices=ACCOUNTS,
        default="default",
        help="default: every behaviour; all-invoiced: every change shown by an invoice or a proration",
    )
    parser.add_argument(
        "--now",
        type=_instant,
        help="the account's present, e.g. 2026-12-07T05:55:00Z (default: the current time); "
        "a run's first line prints it, so any run can be repeated",
    )
    parser.add_argument("--database-url", help="default: a new PostgreSQL database on 127.0.0.1, dropped afterwards")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed first")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the fake Stripe takes per request")
    for name in ("days", "sums", "customer-days", "final"):
        parser.add_argument(f"--floor-{name}", type=float, default=0.0, help="percent (dropped and backfill)")
    parser.add_argument(
        "--max-retries", type=int, default=0, help="events that may need a retry in ordered and shuffled (default 0)"
    )
    parser.add_argument(
        "--max-errors", type=int, help="errors the reconcile (dropped) or backfill may list (default: any number)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--log", type=Path, default=Path("account_replay.log"), help="the processes' log (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.database_url:
        make_url(args.database_url)  # a malformed URL fails here, in one line
    figures = replay(args)
    if args.json:
        args.json.write_text(json.dumps({"line": figures.last_line(), "movements": figures.movements}) + "\n")
    failures = below_floors(figures, args)
    for failure in failures:
        print(f"replay {args.mode}: below the floor: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
