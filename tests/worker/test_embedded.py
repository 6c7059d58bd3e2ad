"""The embedded Redis of local runs: it answers, and it never outlives its command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import redis

from worker.embedded import embedded_redis

GONE_WITHIN_S = 5.0

CHILD = """
import time
from worker.embedded import embedded_redis

with embedded_redis() as url:
    print(url, flush=True)
    time.sleep(60)
"""


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def server_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def server_dir(pid: int) -> Path:
    """The working directory valkey-server was started in (`--dir`)."""
    return Path(os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)"))


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout_s: float = GONE_WITHIN_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@contextmanager
def child_with_embedded_redis(project_root: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A `python -c` process holding an embedded server, and the URL it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=project_root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert url.startswith("redis://"), "the child printed no URL"
        yield child, url
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_embedded_server_answers_ping() -> None:
    with embedded_redis() as url:
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        try:
            assert client.ping() is True
            client.set("subledger:probe", "1")
            assert client.get("subledger:probe") == b"1"
        finally:
            client.close()


def test_embedded_server_is_gone_after_the_block() -> None:
    with embedded_redis() as url:
        pid = server_pid(url)
        assert running(pid)
    assert not answers(url)
    assert not running(pid)


def test_two_embedded_servers_are_apart() -> None:
    with embedded_redis() as first, embedded_redis() as second:
        assert first != second
        with closing(redis.Redis.from_url(first)) as one, closing(redis.Redis.from_url(second)) as other:
            one.set("where", "first")
            assert other.get("where") is None


def test_server_dies_with_a_killed_parent(project_root: Path) -> None:
    with child_with_embedded_redis(project_root) as (child, url):
        pid = server_pid(url)
        workdir = server_dir(pid)
        assert running(pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=GONE_WITHIN_S)
        assert wait_until(lambda: not running(pid)), f"valkey-server {pid} outlived its killed parent"
        assert not answers(url)
        assert not workdir.exists(), "the killed command left its temporary directory behind"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_dies_with_a_parent_asked_to_stop(project_root: Path, signum: int) -> None:
    with child_with_embedded_redis(project_root) as (child, url):
        pid = server_pid(url)
        child.send_signal(signum)
        child.wait(timeout=GONE_WITHIN_S)
        assert wait_until(lambda: not running(pid)), f"valkey-server {pid} outlived its stopped parent"
        assert not answers(url)
