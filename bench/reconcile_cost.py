"""What `subledger reconcile` costs on a whole synthetic account with drift, beside Stripe's rate-limit bound.

    python bench/reconcile_cost.py [--customers 2000] [--months 12] [--seed 1] [--now 2026-12-07T11:45:00Z]
                                   [--account all-invoiced] [--drift-share 0.10] [--latency 0.1]
                                   [--database-url URL] [--redis-url URL] [--json FILE]

The account comes from `worker.synthetic` (as in `bench/account_replay.py`),
served by a fake Stripe API in this process (`fake_stripe.AccountStripe`:
Stripe's live-mode limits, 100 requests/s for the account and 25/s per
endpoint, and `--latency` seconds a request). On a scratch PostgreSQL database
(created and dropped unless `--database-url` names one), `subledger db
upgrade` and `subledger backfill` give an exact ledger. Then the ledger drifts
as lost webhooks would leave it: of the subscriptions with at least two stored
versions, `--drift-share` (chosen at random with `--seed`) lose every version
after their first (and their latest-known row goes back to that first
version), and `subledger rebuild` recomputes the movements from what is left.

One `subledger reconcile` is then timed, with the high-water RSS (VmHWM) of
its process tree polled from /proc; CPU is counted for its processes, the fake
(this process), and PostgreSQL's backends that exited meanwhile (when the
server runs on this machine; other clients' work counts too, so run it on a
quiet server). The fake counts the requests it served to that run alone, per
endpoint (the path with ids as `*`).

The bound is the fastest any client could make the same requests within
Stripe's live-mode limits at subledger's default share of them
(STRIPE_RATE_SHARE, 0.8): all requests at 100 × 0.8 per second, or the
busiest endpoint's at 25 × 0.8, whichever takes longer, plus one request's
latency. Requests refused with a 429 are left out of it (a client that paced
itself would not have made them). Wall time well above the bound means the
run's own work (or PostgreSQL's, or waiting on one request at a time), not
Stripe's limits, sets its pace. The API key is a test-mode key, for which
subledger paces itself to test mode's 25/s × share; the bound at those limits
is shown too.

A second `subledger reconcile` follows at once: right after a reconcile there
is no drift left, so its drifted count should be 0.

Prints the first reconcile's summary line and a table of figures; `--json`
also writes them. Exit status 1 when a command failed or the second run still
found drift. Needs PostgreSQL and Redis (defaults: the local ones; the Redis
database is flushed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.account_replay import ACCOUNTS, _instant, fresh_database  # noqa: E402
from bench.backfill_throughput import cpu_seconds, measured, postmaster  # noqa: E402
from bench.fake_stripe import ENDPOINT_LIMIT, GLOBAL_LIMIT, AccountStripe, Server, Stats  # noqa: E402
from ledger.settings import DEFAULT_STRIPE_RATE_SHARE, load_settings  # noqa: E402
from worker.demo import DEMO_RULES  # noqa: E402
from worker.ratelimit import Limits  # noqa: E402
from worker.synthetic import generate_account  # noqa: E402

DEFAULT_NOW = "2026-12-07T11:45:00Z"
API_KEY = "sk_test_bench"
REPORTED = ("subscriptions_checked", "drifted", "corrected")
"""Counts of the reconcile's summary line shown in the table."""


@dataclass
class Run:
    """One `subledger` command: exit status, wall seconds, peak RSS of its process tree, CPU, its output."""

    status: int
    seconds: float
    peak_kb: int
    cpu_seconds: float
    stdout: str
    stderr: str

    @property
    def summary(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[0] if lines else ""


@dataclass
class Drift:
    eligible: int
    """Subscriptions with at least two stored versions."""
    subscriptions: list[str] = field(default_factory=list)
    versions_removed: int = 0


def subledger(env: Mapping[str, str], *args: str, log_dir: Path, name: str | None = None) -> Run:
    """`subledger ARGS` to its end, its process tree's VmHWM polled; its output kept in `log_dir` as
    NAME.out and NAME.err. Exit status 0, or 1 with a report (a partial run); otherwise SystemExit."""
    executable = os.path.join(os.path.dirname(sys.executable), "subledger")
    name = name or "_".join(args)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        seconds, status, peak, cpu = measured([executable, *args], env, out, err)
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    run = Run(status, seconds, peak, cpu, stdout, stderr)
    if run.status not in (0, 1) or (run.status == 1 and not run.stdout.strip()):
        last = run.stderr.strip().splitlines()[-1:] or [""]
        raise SystemExit(f"reconcile_cost: subledger {' '.join(args)} failed ({run.status}): {last[0]}")
    return run


def process_cpu_seconds() -> float:
    """User + system CPU of this process: the fake Stripe's threads (and the polling)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_drift(url: str, share: float, seed: int) -> Drift:
    """Delete every stored version but the first of `share` of the subscriptions that have two or more,
    and set their latest-known row back to that first version: the ledger never heard of their changes."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            rows = connection.execute(
                text(
                    "SELECT subscription_id, id FROM subscription_snapshots "
                    "ORDER BY subscription_id, observed_at, rank, id"
                )
            ).all()
            versions: dict[str, list[int]] = {}
            for subscription_id, row_id in rows:
                versions.setdefault(str(subscription_id), []).append(int(row_id))
            eligible = sorted(s for s, ids in versions.items() if len(ids) >= 2)
            drift = Drift(eligible=len(eligible))
            drift.subscriptions = sorted(random.Random(seed).sample(eligible, round(len(eligible) * share)))
            for subscription_id in drift.subscriptions:
                first, *later = versions[subscription_id]
                connection.execute(text("DELETE FROM subscription_snapshots WHERE id = ANY(:ids)"), {"ids": later})
                connection.execute(
                    text(
                        "UPDATE subscriptions AS s SET payload = v.payload, observed_at = v.observed_at, "
                        "status = v.payload ->> 'status' FROM subscription_snapshots AS v "
                        "WHERE v.id = :first AND s.id = v.subscription_id"
                    ),
                    {"first": first},
                )
                drift.versions_removed += len(later)
    finally:
        engine.dispose()
    return drift


def summary_counts(line: str) -> dict[str, int]:
    """`reconcile <run> ok: 1,234 subscriptions_checked, 5 drifted, …; 2 errors (first: …)` → counts."""
    head, _, tail = line.partition(";")
    counts = {
        key: int(value.replace(",", "")) for value, key in re.findall(r"(\d[\d,]*) (\w+)", head.split(": ", 1)[-1])
    }
    if errors := re.search(r"(\d[\d,]*) errors", tail):
        counts["errors"] = int(errors.group(1).replace(",", ""))
    return counts


def admitted(stats: Mapping[str, Any]) -> dict[str, int]:
    """Per endpoint, the requests the fake admitted (its 429s left out)."""
    return {name: int(entry["requests"]) - int(entry["rate_limited"]) for name, entry in stats["endpoints"].items()}


def bound_seconds(requests: Mapping[str, int], account_rate: float, endpoint_rate: float, latency: float) -> float:
    """The fastest these requests could be made at these rates: all of them, or the busiest endpoint's,
    plus one request's latency."""
    if not requests:
        return latency
    return max(sum(requests.values()) / account_rate, max(requests.values()) / endpoint_rate) + latency


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1, help="the account's, and the drift's choice")
    parser.add_argument("--now", type=_instant, default=DEFAULT_NOW, help="ISO 8601 (default: %(default)s)")
    parser.add_argument("--account", choices=ACCOUNTS, default="all-invoiced")
    parser.add_argument("--drift-share", type=float, default=0.10, help="of subscriptions with two versions or more")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the fake Stripe takes per request")
    parser.add_argument("--database-url", help="default: a new PostgreSQL database on 127.0.0.1, dropped afterwards")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed before and after")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    account = generate_account(
        customers=args.customers, seed=args.seed, months=args.months, now=args.now, behaviour=ACCOUNTS[args.account]()
    )
    events = account.events()
    fake = Server(AccountStripe(account.objects(), events, now=account.now, latency=args.latency)).start()
    now = datetime.fromtimestamp(account.now, UTC).isoformat(timespec="seconds")
    print(
        f"account: {args.account}, {args.customers:,} customers, {args.months} months, seed {args.seed}, now {now}: "
        f"{len(events):,} events ({time.perf_counter() - started:.0f} s); fake Stripe at {fake.url}",
        flush=True,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="reconcile_cost_"))
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    try:
        with fresh_database(args.database_url) as database_url:
            env = {
                **os.environ,
                **DEMO_RULES,
                "DATABASE_URL": database_url,
                "REDIS_URL": args.redis_url,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": fake.url,
                "FX_RATES_FILE": "",
                "FX_REFERENCE_RATES": "off",  # each currency apart, as the simulator records it
                "REPORTING_CURRENCY": "usd",
            }
            print(f"commands' output in {log_dir}", flush=True)
            subledger(env, "db", "upgrade", log_dir=log_dir)
            backfill = subledger(env, "backfill", log_dir=log_dir)
            print(f"backfill ({backfill.seconds:.0f} s): {backfill.summary.split('; notes:')[0]}", flush=True)
            drift = make_drift(database_url, args.drift_share, args.seed)
            print(
                f"drift: removed {drift.versions_removed:,} versions of {len(drift.subscriptions):,} subscriptions "
                f"(of {drift.eligible:,} with two or more)",
                flush=True,
            )
            rebuild = subledger(env, "rebuild", log_dir=log_dir)
            print(f"rebuild ({rebuild.seconds:.0f} s): {rebuild.summary}", flush=True)

            server_pid = postmaster(database_url)
            database_cpu = cpu_seconds(server_pid, children=True) if server_pid else 0.0
            with fake.fake.lock:
                fake.fake.stats = Stats()
            own_cpu = process_cpu_seconds()
            first = subledger(env, "reconcile", log_dir=log_dir)
            fake_cpu = process_cpu_seconds() - own_cpu
            with fake.fake.lock:
                stats = fake.fake.stats.as_json()
            # The reconcile's connections closed with it: their backends have exited into the count.
            database_cpu = cpu_seconds(server_pid, children=True) - database_cpu if server_pid else float("nan")
            print(f"reconcile ({first.seconds:.0f} s), exit {first.status}: {first.summary}", flush=True)
            second = subledger(env, "reconcile", log_dir=log_dir, name="reconcile_again")
            print(f"second reconcile ({second.seconds:.0f} s), exit {second.status}: {second.summary}", flush=True)
            settings = load_settings(env, dotenv=False)
    finally:
        fake.close()
        redis.flushdb()

    share = DEFAULT_STRIPE_RATE_SHARE
    requests = admitted(stats)
    total = sum(requests.values())
    bound = bound_seconds(requests, GLOBAL_LIMIT * share, ENDPOINT_LIMIT * share, args.latency)
    own = Limits.for_settings(settings)
    own_bound = bound_seconds(requests, own.account_rate, own.endpoint_rate, args.latency)
    counts = summary_counts(first.summary)
    again = summary_counts(second.summary)

    print()
    print(first.summary)
    print()
    print(f"{'endpoint':<30} {'requests':>9} {'429s':>6} {'errors':>7} {'peak/s':>7} {'bound s':>8}")
    for name, entry in stats["endpoints"].items():
        print(
            f"{name:<30} {requests[name]:>9,} {entry['rate_limited']:>6,} {entry['errors']:>7,} "
            f"{entry['peak_per_s']:>7} {requests[name] / (ENDPOINT_LIMIT * share):>8.1f}"
        )
    every = stats["total"]
    print(
        f"{'all':<30} {total:>9,} {every['rate_limited']:>6,} {every['errors']:>7,} "
        f"{every['peak_per_s']:>7} {total / (GLOBAL_LIMIT * share):>8.1f}"
    )
    print()
    print(f"{'what':<58} {'value':>10}")
    rows: list[tuple[str, str]] = [
        ("wall time, s (subledger reconcile)", f"{first.seconds:.1f}"),
        ("requests to Stripe (admitted)", f"{total:,}"),
        (f"bound, s (live: {GLOBAL_LIMIT}/s, {ENDPOINT_LIMIT}/s per endpoint, × {share})", f"{bound:.1f}"),
        ("wall / bound", f"{first.seconds / bound:.1f}"),
        (
            f"bound at the key's own limits, s ({own.mode}: {own.account_rate:g}/s, {own.endpoint_rate:g}/s)",
            f"{own_bound:.1f}",
        ),
        ("wall / that bound", f"{first.seconds / own_bound:.1f}"),
        ("CPU s (reconcile processes)", f"{first.cpu_seconds:.1f}"),
        ("CPU s (PostgreSQL backends that exited meanwhile)", f"{database_cpu:.1f}"),
        ("CPU s (fake Stripe: this process)", f"{fake_cpu:.1f}"),
        ("peak RSS, MB (reconcile process tree)", f"{first.peak_kb / 1024:.0f}"),
        *((f"subscriptions {key.replace('subscriptions_', '')}", f"{counts.get(key, 0):,}") for key in REPORTED),
        ("errors (first run)", f"{counts.get('errors', 0):,}"),
        ("drifted in the second run (0 expected)", f"{again.get('drifted', 0):,}"),
        ("wall time, s (second run)", f"{second.seconds:.1f}"),
    ]
    for what, value in rows:
        print(f"{what:<58} {value:>10}")
    listed = first.stdout.strip().splitlines()[1:]
    if listed:
        print()
        print(f"the reconcile's drift list, {min(len(listed), 5)} of {len(listed)} lines:")
        for line in listed[:5]:
            print(f"  | {line}")
        if len(listed) > 5:
            print(f"  | … (all of it in {log_dir / 'reconcile.out'})")

    if args.json:
        figures = {
            "summary": first.summary,
            "wall_s": round(first.seconds, 3),
            "requests": total,
            "requests_by_endpoint": requests,
            "rate_limited": int(every["rate_limited"]),
            "bound_s": round(bound, 3),
            "wall_over_bound": round(first.seconds / bound, 3),
            "bound_own_limits_s": round(own_bound, 3),
            "cpu_s": round(first.cpu_seconds, 3),
            "database_cpu_s": round(database_cpu, 3),
            "fake_cpu_s": round(fake_cpu, 3),
            "peak_rss_kb": first.peak_kb,
            "counts": counts,
            "drift": {
                "subscriptions": len(drift.subscriptions),
                "versions_removed": drift.versions_removed,
                "subscription_ids": drift.subscriptions,
            },
            "second_run": {"summary": second.summary, "counts": again, "wall_s": round(second.seconds, 3)},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if again.get("drifted", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
