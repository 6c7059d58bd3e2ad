"""`subledger demo`: the whole system fed through its own webhook, the API showing
the generator's MRR, and nothing left running after Ctrl-C.

The end-to-end runs compare the API with the MRR the generator expects (the
demo writes it to `<dir>/account/expected_mrr.json`):

- with `--no-fx`, the API answers per currency (`by_currency`), so every
  day's native MRR is compared exactly, currency by currency;
- with the default rates (the ECB's reference rates), the API answers in USD;
  every day must equal the generator's USD plus its EUR converted at that
  day's rate (conversion by ledger.fx, tested on its own).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests

from ledger.fx import ReferenceRates, convert
from ledger.intake import partition_of
from ledger.settings import load_settings
from tests.processes import free_port, wait_for
from tests.worker.test_serve import alive, descendants
from worker.cli import main
from worker.demo import demo_environment, demo_files, lanes, start_fresh
from worker.synthetic import generate_account

DASHBOARD_TIMEOUT_S = 150.0
"""Generous: the demo takes well under a minute, but CI machines are busy."""


# --- Pieces ----------------------------------------------------------------------------------


def test_each_customers_events_stay_in_one_lane_in_order() -> None:
    events = generate_account(customers=30, seed=1).events()
    split = lanes(events, 4)
    assert sorted(e["id"] for lane in split for e in lane) == sorted(e["id"] for e in events)
    owners = {partition_of(e): index for index, lane in enumerate(split) for e in lane}
    for index, lane in enumerate(split):
        assert all(owners[partition_of(e)] == index for e in lane)
        order = {e["id"]: n for n, e in enumerate(events)}
        assert [order[e["id"]] for e in lane] == sorted(order[e["id"]] for e in lane)


def test_the_demo_environment_pins_what_the_numbers_depend_on(tmp_path: Path) -> None:
    files = demo_files(tmp_path)
    base = {"REDIS_URL": "redis://prod:6379/0", "STRIPE_API_KEY": "sk_live_x", "PAST_DUE_GRACE_DAYS": "7", "HOME": "/h"}
    base |= {"FX_RATES_FILE": "/etc/fx.csv"}
    env = demo_environment(base, files, webhook_secret="whsec_demo", api_token="token", fx=False)
    assert "REDIS_URL" not in env and env["HOME"] == "/h"
    settings = load_settings(env, dotenv=False)
    assert settings.stripe_api_key is None
    assert settings.rules.past_due_grace_days is None
    assert (settings.fx_rates_file, settings.fx_reference_rates) == (None, False)
    converting = demo_environment(base, files, webhook_secret="whsec_demo", api_token="token", fx=True)
    assert load_settings(converting, dotenv=False).fx_reference_rates
    assert settings.database_url == f"sqlite:///{files.database}"
    assert settings.webhook_secrets == ("whsec_demo",) and settings.api_token == "token"


def test_a_second_run_starts_from_a_fresh_database(tmp_path: Path) -> None:
    files = demo_files(tmp_path / "demo")
    assert start_fresh(files) is False
    files.database.write_bytes(b"old")
    files.database.with_name("subledger.db-wal").write_bytes(b"old")
    assert start_fresh(files) is True
    assert not files.database.exists() and not files.database.with_name("subledger.db-wal").exists()


def test_a_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port), "--dir", str(tmp_path), "--customers", "5"]) == 1
    assert capsys.readouterr().err.strip() == f"subledger: port {port} is in use: choose another with --port"


# --- The whole demo ----------------------------------------------------------------------------


class RunningDemo:
    """`subledger demo` as a child process, its output read line by line."""

    def __init__(self, directory: Path, *flags: str, customers: int = 60, token: str | None = None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SUBLEDGER_API_TOKEN"}}
        if token is not None:
            env["SUBLEDGER_API_TOKEN"] = token
        command = [
            os.path.join(os.path.dirname(sys.executable), "subledger"),
            "demo", "--no-live", "--customers", str(customers),
            "--port", str(self.port), "--dir", str(directory), *flags,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=directory.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, start: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.output)
                continue
            self.output.append(line)
            if line.startswith(start):
                return line
        raise AssertionError(f"no line starting {start!r} within {timeout:.0f} s:\n{''.join(self.output)}")

    def wait_for_dashboard(self) -> tuple[str, str]:
        """The dashboard's URL and token, once the demo says it is ready."""
        line = self.wait_for_line("Dashboard:", DASHBOARD_TIMEOUT_S)
        return line.split()[1].rstrip("/"), line.split()[3]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status


def api_get(url: str, token: str, **params: str) -> Any:
    response = requests.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _run_and_check(tmp_path: Path, *flags: str, check: Any, token: str | None = None) -> list[str]:
    directory = tmp_path / "demo"
    demo = RunningDemo(directory, *flags, token=token)
    started: set[int] = set()
    try:
        url, shown = demo.wait_for_dashboard()
        assert url == f"http://127.0.0.1:{demo.port}"
        assert shown == token if token is not None else len(shown) >= 32, "the token set, else a new one"
        token = shown
        expected = json.loads((directory / "account" / "expected_mrr.json").read_text())
        days = sorted(expected["usd"])
        answer = api_get(f"{url}/api/v1/mrr", token, interval="day", start=days[0], end=days[-1])
        summary = api_get(f"{url}/api/v1/summary", token, month=days[-1][:7])
        check(answer, summary, expected, directory)
        started = descendants(demo.process.pid)
        assert len(started) >= 5  # redis, gunicorn (+ its workers), two workers, clock
    finally:
        status = demo.stop()
    assert status == 0, "".join(demo.output)
    assert wait_for(lambda: not any(alive(pid) for pid in started), timeout=15), "a process outlived the demo"
    return demo.output


def _native(answer: Any, summary: Any, expected: dict[str, dict[str, int]], directory: Path) -> None:
    assert answer["currency"] is None and answer["missing_rates"] == []
    booked = {s["currency"]: {p["date"]: p["mrr"] for p in s["points"]} for s in answer["by_currency"]}
    assert set(booked) == set(expected) == {"usd", "eur"}
    for currency, series in expected.items():
        wrong = [
            (day, booked[currency].get(day), mrr) for day, mrr in series.items() if booked[currency].get(day) != mrr
        ]
        assert wrong == [], f"{currency}: (day, API, generator) differ on {len(wrong)} days: {wrong[:5]}"
    today = max(expected["usd"])
    assert {row["currency"]: row["mrr"] for row in summary["by_currency"]} == {
        currency: series[today] for currency, series in expected.items()
    }


def _in_usd(answer: Any, summary: Any, expected: dict[str, dict[str, int]], directory: Path) -> None:
    assert answer["currency"] == "usd" and answer["missing_rates"] == []
    rates = ReferenceRates("usd")
    booked = {p["date"]: p["mrr"] for p in answer["points"]}
    assert set(booked) == set(expected["usd"])
    wrong = []
    for day, usd in expected["usd"].items():
        eur = convert(expected["eur"][day], "eur", date.fromisoformat(day), rates)
        if booked[day] != usd + (eur or 0):
            wrong.append((day, booked[day], usd, eur))
    assert wrong == [], f"(day, API, usd, eur in usd) differ on {len(wrong)} days: {wrong[:5]}"
    assert (summary["currency"], summary["mrr"]) == ("usd", booked[max(booked)])


@pytest.mark.slow
def test_demo_ingests_the_account_through_the_webhook_and_the_api_shows_the_generators_mrr(tmp_path: Path) -> None:
    output = _run_and_check(tmp_path, "--no-fx", check=_native)
    assert any(line.startswith("Delivering ") and "webhooks" in line for line in output)


@pytest.mark.slow
def test_demo_reports_in_usd_with_its_fx_rates_starts_fresh_and_keeps_the_token_set(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "subledger.db").write_bytes(b"an earlier run")
    output = _run_and_check(tmp_path, check=_in_usd, token="a-bookmarked-demo-token")
    assert output[0].startswith("Removed the database of an earlier demo")
