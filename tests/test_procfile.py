"""The Procfile as a deployment runs it: release, web and worker lines, with the
variables of .env.example, take a signed event over HTTP to `processed`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dotenv import dotenv_values
from sqlalchemy import select

from ledger.db import Database
from ledger.models import StripeEvent
from ledger.settings import Settings
from tests.processes import free_port, healthy, wait_for
from tests.stripe_payloads import WEBHOOK_SECRET, event_2020, signed

pytestmark = pytest.mark.slow


def procfile(root: Path) -> dict[str, str]:
    lines = (root / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


@pytest.fixture
def environment(project_root: Path, settings: Settings) -> dict[str, str]:
    example = {key: value or "" for key, value in dotenv_values(project_root / ".env.example").items()}
    bin_dir = os.path.dirname(sys.executable)
    return {
        **os.environ,
        **example,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PORT": str(free_port()),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }


@pytest.fixture
def start(environment: dict[str, str], project_root: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def run(line: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {line}"], env=environment, cwd=project_root, start_new_session=True
        )
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)


def test_procfile_web_and_worker_process_a_signed_event(
    project_root: Path, environment: dict[str, str], start, db: Database, redis
) -> None:
    lines = procfile(project_root)
    assert set(lines) == {"web", "worker", "clock", "release"}
    assert start(lines["release"]).wait(timeout=60) == 0
    start(lines["web"])
    start(lines["worker"])
    url = f"http://127.0.0.1:{environment['PORT']}"

    assert wait_for(lambda: healthy(url)), "web process did not answer /healthz"
    event = event_2020("subscription_created")
    body, headers = signed(event)
    response = requests.post(f"{url}/webhooks/stripe", data=body, headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (200, {"received": True})

    def processed() -> bool:
        with db.session() as session:
            return session.scalar(select(StripeEvent.status).where(StripeEvent.id == event["id"])) == "processed"

    assert wait_for(processed), "the worker did not process the event"
