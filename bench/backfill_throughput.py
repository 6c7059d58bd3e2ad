"""Objects per second `subledger backfill` imports, beside what Stripe's rate limits allow.

    python bench/backfill_throughput.py [--customers 15000] [--subscriptions 20000] [--invoices 200000]
                                        [--latency 0.1] [--server-url URL] [--redis-url URL]

Starts `bench/fake_stripe.py` (a synthetic account behind Stripe's live-mode
limits: 100 requests/s, 25/s per endpoint, 100 ms a request), creates a
scratch PostgreSQL database, runs `subledger db upgrade` and then times one
`subledger backfill` process (STRIPE_API_KEY=sk_live_…, STRIPE_API_BASE at the
fake) to its end. The bound is the fastest any client could read the same
pages within those limits: each endpoint's pages at 25/s, all pages at
100/s, whichever is longer, plus one request's latency; pages are the ones the
fake actually served (partial last pages of parallel windows included).
Peak memory is the high-water RSS (VmHWM) of the backfill process and its
children, polled from /proc. CPU is counted for the backfill's processes, the
fake, and PostgreSQL's backends that exited meanwhile (when the server runs on
this machine; other clients' work counts too, so run it on a quiet server).
Prints a table and the command's last lines.
Needs PostgreSQL and Redis (defaults: the local ones; Redis db 14 is flushed,
the scratch database dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from redis import Redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fake_stripe import ENDPOINT_LIMIT, GLOBAL_LIMIT  # noqa: E402

Measured = tuple[float, int, int, float]
"""Wall seconds, exit status, peak RSS (kB), CPU seconds of a command (`measured`)."""

TARGET_SHARE = 0.70
"""Ours ÷ bound at least this."""

TARGET_PEAK_MB = 300
"""Peak RSS of the backfill process tree below this."""


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "fake_stripe.py"),
            "--port",
            "0",
            "--customers",
            str(args.customers),
            "--subscriptions",
            str(args.subscriptions),
            "--invoices",
            str(args.invoices),
            "--seed",
            str(args.seed),
            "--latency",
            str(args.latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if not url.startswith("http://"):
        server.kill()
        raise SystemExit("the fake Stripe did not start")
    return server, url


def fake_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/__stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def high_water_kb(pids: list[int]) -> int:
    """Sum of VmHWM over live processes (a process's own peak; threads share it)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, …, utime (11), stime, cutime (13), cstime."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU a live process has used (or its exited children), from /proc/<pid>/stat."""
    fields = stat_fields(pid)
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def postmaster(url: str) -> int | None:
    """The local PostgreSQL server's main process, whose exited children are the backends; None if not here."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return int(stat_fields(backend)[1])
    except OSError:
        return None
    finally:
        engine.dispose()


def measured(command: list[str], env: Mapping[str, str], stdout: IO[str], stderr: IO[str] | int) -> Measured:
    """Run `command` to its end, polling its process tree's VmHWM: wall seconds, exit status, peak RSS
    (kB) and CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    process = subprocess.Popen(command, env=dict(env), stdout=stdout, stderr=stderr)
    peak = 0
    while process.poll() is None:
        peak = max(peak, high_water_kb(tree(process.pid)))
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of waited children is the largest single one: a floor when polling missed the last moments.
    if usage.ru_maxrss > before:
        peak = max(peak, usage.ru_maxrss)
    return elapsed, process.returncode, peak, usage.ru_utime + usage.ru_stime - cpu_before


def run_backfill(env: dict[str, str], log_path: Path) -> Measured:
    """Wall seconds, exit status, peak RSS (kB) and CPU seconds of one `subledger backfill`."""
    subledger = os.path.join(os.path.dirname(sys.executable), "subledger")
    with open(log_path, "w") as log:
        return measured([subledger, "backfill"], env, log, subprocess.STDOUT)


def bound_seconds(stats: dict[str, Any], latency: float) -> tuple[float, str]:
    """The fastest the served pages could be read within Stripe's limits, and which limit binds."""
    endpoints = stats["endpoints"]
    pages = {name: entry["ok"] for name, entry in endpoints.items()}
    slowest = max(pages, key=lambda name: pages[name])
    per_endpoint = pages[slowest] / ENDPOINT_LIMIT
    overall = sum(pages.values()) / GLOBAL_LIMIT
    if per_endpoint >= overall:
        return per_endpoint + latency, f"{pages[slowest]:,} pages of {slowest} at {ENDPOINT_LIMIT}/s"
    return overall + latency, f"{sum(pages.values()):,} requests at {GLOBAL_LIMIT}/s"


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            counts = {
                f"stripe_objects: {kind}": n
                for kind, n in connection.execute(
                    text("SELECT object, count(*) FROM stripe_objects GROUP BY object ORDER BY object")
                )
            }
            for table in ("customers", "subscription_snapshots", "movements"):
                counts[table] = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()
    return counts


PROGRESS_DONE = re.compile(r"(\w+): ([\d,]+)(?:/[\d,]+)? done, ([\d.]+)/s, (\d+)s elapsed")


def phases(log: str) -> list[str]:
    """The backfill's own account of each stream: `invoices: 200,000 in 400 s (500/s)`."""
    found = []
    for match in PROGRESS_DONE.finditer(log):
        stream, count, rate, seconds = match.groups()
        found.append(f"{stream}: {count} in {seconds} s ({float(rate):,.0f}/s)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=15_000)
    parser.add_argument("--subscriptions", type=int, default=20_000)
    parser.add_argument("--invoices", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--log", help="keep the backfill's output here (default: a temporary file)")
    args = parser.parse_args()

    name = f"subledger_bench_{os.getpid()}"
    admin = create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = args.server_url.rsplit("/", 1)[0] + f"/{name}"
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    server, stripe_url = start_fake(args)
    log_path = Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="backfill_", suffix=".log")[1])
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": args.redis_url,
        "STRIPE_API_KEY": "sk_live_benchmark0000000000",
        "STRIPE_API_BASE": stripe_url,
        "PYTHONPATH": str(ROOT),
    }
    try:
        subledger = os.path.join(os.path.dirname(sys.executable), "subledger")
        subprocess.run([subledger, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"fake Stripe at {stripe_url}; backfill output in {log_path}", flush=True)
        server_pid = postmaster(url)
        database_cpu = cpu_seconds(server_pid, children=True) if server_pid else 0.0
        elapsed, status, peak_kb, backfill_cpu = run_backfill(env, log_path)
        # The backfill's connections closed with it: their backends have exited into the count.
        database_cpu = cpu_seconds(server_pid, children=True) - database_cpu if server_pid else float("nan")
        stats = fake_stats(stripe_url)
        fake_cpu = cpu_seconds(server.pid)
        rows = row_counts(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
        redis.flushdb()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    total = stats["total"]
    served = total["objects"]
    bound, binding = bound_seconds(stats, args.latency)
    ours, best = served / elapsed, served / bound
    print()
    print(f"{'endpoint':<26} {'requests':>9} {'429s':>6} {'pages':>7} {'objects':>9} {'peak/s':>7} {'bound s':>8}")
    for endpoint, entry in stats["endpoints"].items():
        print(
            f"{endpoint:<26} {entry['requests']:>9,} {entry['rate_limited']:>6,} {entry['pages']:>7,} "
            f"{entry['objects']:>9,} {entry['peak_per_s']:>7} {entry['ok'] / ENDPOINT_LIMIT:>8.1f}"
        )
    print(
        f"{'all':<26} {total['requests']:>9,} {total['rate_limited']:>6,} {total['pages']:>7,} "
        f"{served:>9,} {total['peak_per_s']:>7} {total['ok'] / GLOBAL_LIMIT:>8.1f}"
    )
    print()
    for table, n in rows.items():
        print(f"  rows in {table:<38} {n:>9,}")
    print()
    print(f"{'what':<52} {'value':>12}")
    print(f"{'wall time, s (subledger backfill)':<52} {elapsed:>12.1f}")
    print(f"{'objects served by the fake Stripe':<52} {served:>12,}")
    print(f"{'subledger: objects per second':<52} {ours:>12,.0f}")
    print(f"{'bound: objects per second Stripe limits allow':<52} {best:>12,.0f}")
    print(f"{'ours / bound (target ≥ 70%)':<52} {ours / best:>12.0%}")
    print(f"{'peak RSS, MB (backfill process tree; < 300)':<52} {peak_kb / 1024:>12.0f}")
    print(f"{'429 answers received':<52} {total['rate_limited']:>12,}")
    cpu = f"{backfill_cpu:.0f} / {fake_cpu:.0f} / {database_cpu:.0f}"
    print(f"{'CPU s: backfill processes / fake Stripe / PostgreSQL':<52} {cpu:>18}")
    print()
    print(f"bound {bound:.1f} s: {binding}, plus {args.latency * 1000:.0f} ms latency")
    output = log_path.read_text(errors="replace")
    print("streams, as the backfill reports them: " + "; ".join(phases(output)))
    print(f"`subledger backfill` exited {status}; its last lines:")
    for line in output.splitlines()[-8:]:
        print(f"  {line}")
    verdicts = []
    if ours / best < TARGET_SHARE:
        verdicts.append(f"below {TARGET_SHARE:.0%} of the bound")
    if peak_kb / 1024 >= TARGET_PEAK_MB:
        verdicts.append(f"peak memory over {TARGET_PEAK_MB} MB")
    if status != 0:
        verdicts.append("the backfill failed")
    print("targets met" if not verdicts else "targets missed: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
