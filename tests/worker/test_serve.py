"""`subledger serve`: the whole system on one machine, and nothing left behind when it stops."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.processes import free_port, healthy, wait_for
from tests.stripe_payloads import WEBHOOK_SECRET, current_event, signed

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_serve_runs_web_worker_and_clock_on_embedded_defaults_and_stops_clean(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["STRIPE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    command = [os.path.join(os.path.dirname(sys.executable), "subledger"), "serve", "--port", str(port)]
    serve = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        assert wait_for(lambda: healthy(url)), "serve did not come up"
        assert serve.stdout is not None
        assert f"http://127.0.0.1:{port}/" in serve.stdout.readline().decode()
        payload = subscription(item(price(4900)), start=utc(3, 1))
        event = current_event("customer.subscription.created", payload, event_id="evt_serve", created=ts(utc(3, 1)))
        body, headers = signed(event)
        assert requests.post(f"{url}/webhooks/stripe", data=body, headers=headers, timeout=5).status_code == 200

        def booked() -> bool:
            with sqlite3.connect(tmp_path / "subledger.db") as connection:
                rows = connection.execute("SELECT type, amount FROM movements").fetchall()
            return rows == [("new", 4900)]

        assert wait_for(booked), "the event did not become a movement"
        started = descendants(serve.pid)
        assert len(started) >= 5  # redis, gunicorn (+ its workers), two workers, clock
    finally:
        serve.send_signal(signal.SIGINT)
        status = serve.wait(timeout=30)
        if serve.stdout is not None:
            serve.stdout.close()
    assert status == 0
    assert wait_for(lambda: not any(alive(pid) for pid in started), timeout=10), "a child outlived serve"
