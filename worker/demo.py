"""`subledger demo`: the whole system on this machine, fed by a synthetic Stripe account.

Nothing is taken in by a side door: the account's events (worker.synthetic)
are signed with the demo's own webhook secret and POSTed to its own
`/webhooks/stripe`, so they go through the receiver, the events table, the
queue, the workers and the ledger exactly as a production account's would.

The demo directory holds everything a run makes: the SQLite database, the
FX rates, the account it delivered (`account/`: events, objects and the MRR
the generator expects each day) and the processes' log. A new run starts
from a fresh database.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from ledger.errors import SubledgerError
from ledger.intake import partition_of
from ledger.settings import load_settings
from worker.local import ProcessGroup, local_system
from worker.synthetic import Behaviour, SyntheticAccount, export, generate_account, sign

DEFAULT_DIRECTORY = Path("subledger-demo")
"""Where a demo keeps its database, rates, account and log (relative to the working directory)."""

DELIVERY_THREADS = 4
"""Concurrent webhook senders. Each customer's events go through one of them, in order."""

LIVE_EVERY_S = (2.0, 6.0)
"""Seconds between two live events (drawn uniformly)."""

START_TIMEOUT_S = 60.0
"""The web process must answer /healthz within this long."""

PROCESSING_TIMEOUT_S = 300.0
"""How long to wait for the workers to process the delivered history."""

DEMO_RULES = {
    "CHURN_RECOGNITION": "ended",
    "PAST_DUE_GRACE_DAYS": "",
    "DISCOUNTS_ONCE": "ignore",
    "REACTIVATION_WINDOW_DAYS": "",
    "NETTING": "day",
}
"""The default rule settings, set explicitly: the generator's expected MRR follows them,
and a `.env` in the working directory must not change what the demo shows."""


class DemoError(SubledgerError, RuntimeError):
    """The demo cannot go on; the message says why."""


@dataclass(frozen=True)
class DemoFiles:
    directory: Path
    database: Path
    account: Path
    log: Path


def demo_files(directory: Path) -> DemoFiles:
    directory = directory.resolve()
    return DemoFiles(
        directory=directory,
        database=directory / "subledger.db",
        account=directory / "account",
        log=directory / "subledger.log",
    )


def start_fresh(files: DemoFiles) -> bool:
    """Create the demo directory; remove a database an earlier run left. True if one was removed."""
    files.directory.mkdir(parents=True, exist_ok=True)
    removed = False
    for path in (files.database, *(files.database.with_name(files.database.name + s) for s in ("-wal", "-shm"))):
        if path.exists():
            path.unlink()
            removed = True
    return removed


def demo_environment(
    base: Mapping[str, str], files: DemoFiles, *, webhook_secret: str, api_token: str, fx: bool
) -> dict[str, str]:
    """The environment every process of the demo runs with.

    Everything the demo depends on is set, even to empty: an empty variable
    still wins over the working directory's `.env`. No Stripe key, so the
    demo never calls Stripe; no REDIS_URL, so it runs on an embedded Redis.
    """
    env = {key: value for key, value in base.items() if key != "REDIS_URL"}
    env.update(DEMO_RULES)
    env.update(
        DATABASE_URL=f"sqlite:///{files.database}",
        STRIPE_WEBHOOK_SECRET=webhook_secret,
        SUBLEDGER_API_TOKEN=api_token,
        FX_RATES_FILE="",
        FX_REFERENCE_RATES="ecb" if fx else "off",
        REPORTING_CURRENCY="usd",
        STRIPE_API_KEY="",
        STRIPE_API_BASE="",
    )
    return env


# --- Delivering events -----------------------------------------------------------------------


class WebhookSender:
    """Signs events as Stripe does and POSTs them to the demo's own webhook endpoint."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def send(self, event: Mapping[str, Any]) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, self.secret, int(time.time()))}
        for attempt in range(5):
            response = self._session().post(self.url, data=body, headers=headers, timeout=60)
            if response.status_code == 200:
                return
            if response.status_code != 503:
                raise DemoError(f"the webhook refused {event['id']}: HTTP {response.status_code} {response.text[:200]}")
            time.sleep(0.5 * (attempt + 1))  # not stored this time (503): Stripe would retry, so does the demo
        raise DemoError(f"the webhook could not store {event['id']} (HTTP 503 five times)")


def lanes(events: Sequence[Mapping[str, Any]], count: int) -> list[list[Mapping[str, Any]]]:
    """Events split among `count` senders; one customer's events stay in one lane, in order.

    In order, because a subscription names its discount by id: the discount's
    own event must be stored first, or the worker would look for it (and,
    without a Stripe key, retry later).
    """
    result: list[list[Mapping[str, Any]]] = [[] for _ in range(count)]
    for event in events:
        result[zlib.crc32(partition_of(event).encode()) % count].append(event)
    return [lane for lane in result if lane]


def deliver(
    sender: WebhookSender,
    events: Sequence[Mapping[str, Any]],
    *,
    threads: int,
    on_progress: Callable[[int], None],
    check: Callable[[], None],
) -> None:
    """Send every event; `on_progress(sent so far)`; `check()` raises to stop early."""
    sent = 0
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(lane: list[Mapping[str, Any]]) -> None:
        nonlocal sent
        try:
            for event in lane:
                if stop.is_set():
                    return
                sender.send(event)
                with lock:
                    sent += 1
        except (DemoError, requests.RequestException) as exc:
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=run, args=(lane,), daemon=True) for lane in lanes(events, threads)]
    for worker in workers:
        worker.start()
    try:
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.2)
            on_progress(sent)
            check()
    finally:
        stop.set()
    on_progress(sent)
    if errors:
        raise DemoError(f"delivery stopped: {errors[0]}")


def event_counts(database: Path) -> dict[str, int]:
    """Stored events by status, read without taking SQLite's write lock."""
    with sqlite3.connect(database, timeout=30) as connection:
        rows = connection.execute("SELECT status, COUNT(*) FROM stripe_events GROUP BY status").fetchall()
    connection.close()
    return {str(status): int(count) for status, count in rows}


# --- Showing progress ------------------------------------------------------------------------


class Progress:
    """A rich progress bar on a terminal; otherwise a plain line now and then."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._printed: dict[str, tuple[float, int]] = {}
        if interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self._bar.start()

    def update(self, name: str, done: int, total: int) -> None:
        if self._bar is not None:
            if name not in self._tasks:
                self._tasks[name] = self._bar.add_task(name, total=total)
            self._bar.update(self._tasks[name], completed=done, total=total)
            return
        last_time, last_done = self._printed.get(name, (0.0, -1))
        if done != last_done and (done >= total or time.monotonic() - last_time >= 3.0):
            print(f"  {name}: {done}/{total}", flush=True)
            self._printed[name] = (time.monotonic(), done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# --- The run ---------------------------------------------------------------------------------


def _stop_requested(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ replaced by `env` for the block: the children inherit it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Standard output and error go to `log` for the block, at the file-descriptor level.

    Child processes started inside it keep writing their logs there (every
    processed event is a log line), so the terminal shows only the demo.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


class _Stopped(Exception):
    """A process of the system exited on its own."""


BURST_WORKER = "catalog worker"
"""The worker that processes the catalog and exits (`subledger worker --burst`)."""


def _check(group: ProcessGroup) -> None:
    for name, code in group.exited():
        if not (name == BURST_WORKER and code == 0):
            raise _Stopped(f"the {name} process exited with status {code}")


def _start_workers(group: ProcessGroup, log: Path, count: int, *, burst: bool = False) -> None:
    executable = os.path.join(os.path.dirname(sys.executable), "subledger")
    with _output_to(log):
        for _ in range(count):
            group.start(BURST_WORKER if burst else "worker", [executable, "worker", *(["--burst"] if burst else [])])


def _wait_exited(group: ProcessGroup, name: str) -> None:
    while any(process.poll() is None for found, process in group.processes if found == name):
        _check(group)
        time.sleep(0.1)


def _wait_healthy(url: str, group: ProcessGroup) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check(group)
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise DemoError(f"the web process did not answer {url}/healthz within {START_TIMEOUT_S:.0f} s")


def _wait_processed(files: DemoFiles, total: int, progress: Progress, group: ProcessGroup) -> dict[str, int]:
    """Wait until every delivered event is processed (or failed); the final counts."""
    deadline = time.monotonic() + PROCESSING_TIMEOUT_S
    while True:
        _check(group)
        counts = event_counts(files.database)
        done = sum(count for status, count in counts.items() if status != "pending")
        progress.update("processed by the workers", done, total)
        if counts.get("pending", 0) == 0 and sum(counts.values()) >= total:
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


def run_demo(
    settings_env: Mapping[str, str],
    *,
    directory: Path = DEFAULT_DIRECTORY,
    customers: int,
    seed: int,
    port: int,
    live: bool,
    workers: int = 2,
    fx: bool = True,
) -> int:
    """Run the demo until Ctrl-C (or SIGTERM); 1 if one of its processes dies."""
    started = time.monotonic()
    if not _port_is_free(port):
        raise DemoError(f"port {port} is in use: choose another with --port")
    # Explicit, as in `subledger serve`: a shell starting this in the background ignores SIGINT.
    signal.signal(signal.SIGINT, _stop_requested)
    signal.signal(signal.SIGTERM, _stop_requested)
    files = demo_files(directory)
    if start_fresh(files):
        print(f"Removed the database of an earlier demo in {files.directory}: starting fresh.")

    print(f"Generating a synthetic Stripe account: {customers} customers over 24 months (seed {seed})…", flush=True)
    account = generate_account(customers=customers, seed=seed, behaviour=Behaviour.demo())
    history = account.events()
    catalog = account.catalog_events
    export(account, files.account)
    print(f"  {len(history)} events, written to {files.account}/", flush=True)

    webhook_secret = "whsec_" + secrets.token_urlsafe(24)
    # A token the user set keeps a bookmarked dashboard login working from one demo to the next.
    api_token = settings_env.get("SUBLEDGER_API_TOKEN", "").strip() or secrets.token_urlsafe(24)
    env = demo_environment(settings_env, files, webhook_secret=webhook_secret, api_token=api_token, fx=fx)
    settings = load_settings(env, dotenv=False)
    url = f"http://127.0.0.1:{port}"
    print(f"Starting web and clock on {url} (SQLite and an embedded Redis; log: {files.log})…", flush=True)

    with ExitStack() as stack:
        stack.enter_context(_environment(env))
        with _output_to(files.log):
            # The workers start once the history is in (see _deliver_history).
            group = stack.enter_context(local_system(settings, port=port, workers=0))
        progress = Progress(sys.stdout.isatty())
        try:
            _wait_healthy(url, group)
            sender = WebhookSender(f"{url}/webhooks/stripe", webhook_secret)
            _deliver_history(catalog, history, sender, files, progress, group, workers)
            progress.close()
            _print_ready(url, api_token, files, account, time.monotonic() - started, fx)
            if live:
                _live(account, sender, group)
            else:
                print("Live activity is off (--no-live). Ctrl-C stops everything.", flush=True)
                while True:
                    _check(group)
                    time.sleep(0.5)
        except KeyboardInterrupt:
            progress.close()
            print("\nStopping every process of the demo…", flush=True)
            return 0
        except _Stopped as exc:
            progress.close()
            print(f"subledger demo: {exc}; stopped everything (see {files.log})", file=sys.stderr)
            return 1
    return 0  # pragma: no cover - the block only ends by an exception


def _deliver_history(
    catalog: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    sender: WebhookSender,
    files: DemoFiles,
    progress: Progress,
    group: ProcessGroup,
    workers: int,
) -> None:
    """Deliver the history through the webhook and wait until the workers have processed it.

    The catalog goes first and a burst worker processes it, because a
    subscription's discount names its coupon by id and the coupon lives in a
    partition of its own, which a worker could otherwise reach after the
    subscription's. The rest is delivered before the long-running workers
    start: SQLite has one writer at a time, and webhooks competing with busy
    workers for it are taken in ten times slower. The events wait in the
    events table, their drain jobs in the queue, as they would for a
    production deployment whose workers are scaled up after a burst.
    """
    print(f"Delivering {len(history)} signed webhooks to {sender.url}…", flush=True)
    started = time.monotonic()

    def check() -> None:
        _check(group)

    def sent(done: int, offset: int = 0) -> None:
        progress.update("webhooks delivered", offset + done, len(history))

    deliver(sender, catalog, threads=DELIVERY_THREADS, on_progress=sent, check=check)
    _start_workers(group, files.log, 1, burst=True)
    _wait_processed(files, len(catalog), progress, group)
    _wait_exited(group, BURST_WORKER)
    rest = history[len(catalog) :]
    deliver(sender, rest, threads=DELIVERY_THREADS, on_progress=lambda n: sent(n, len(catalog)), check=check)
    _start_workers(group, files.log, workers)
    counts = _wait_processed(files, len(history), progress, group)
    elapsed = time.monotonic() - started
    progress.close()
    print(f"  {counts.get('processed', 0)} events processed in {elapsed:.1f} s", flush=True)
    if counts.get("pending") or counts.get("failed"):
        print(
            f"  warning: {counts.get('pending', 0)} events still pending, {counts.get('failed', 0)} failed "
            f"(see {files.log})",
            flush=True,
        )


def _print_ready(url: str, token: str, files: DemoFiles, account: SyntheticAccount, elapsed: float, fx: bool) -> None:
    expected = account.expected_mrr()
    today = datetime.fromtimestamp(account.now, UTC).date().isoformat()
    mrr = ", ".join(f"{currency.upper()} {series[today] / 100:,.2f}" for currency, series in expected.items())
    print()
    print(f"Ready in {elapsed:.1f} s. MRR today: {mrr}" + (" (reported in USD at the ECB's daily rates)" if fx else ""))
    print(f"Dashboard: {url}/  token: {token}", flush=True)
    print(f'API:       curl -H "Authorization: Bearer {token}" "{url}/api/v1/summary"')
    print(f"Files:     {files.directory}/ (database, account/, subledger.log)", flush=True)


def _live(account: SyntheticAccount, sender: WebhookSender, group: ProcessGroup) -> None:
    print("Live activity: a new event every few seconds. Ctrl-C stops everything.", flush=True)
    rng = random.Random()
    while True:
        wake_at = time.monotonic() + rng.uniform(*LIVE_EVERY_S)
        while time.monotonic() < wake_at:
            _check(group)
            time.sleep(0.2)
        now = int(time.time())
        activity = account.live_activity(now)
        for event in activity.events:
            sender.send(event)
        stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S")
        print(f"  {stamp} {activity.description}", flush=True)


def export_account(directory: Path, *, customers: int, seed: int) -> int:
    """`subledger demo --export DIR`: write the account as JSON and start nothing."""
    account = generate_account(customers=customers, seed=seed, behaviour=Behaviour.demo())
    for path in export(account, directory):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
