"""Running the whole system on one machine: web, workers and clock as child
processes of one command, on an embedded Redis unless REDIS_URL is set.

Children die with the command: they are stopped on exit or Ctrl-C and, if
the command is killed outright, the kernel stops them (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import IO

from ledger import migrate
from ledger.db import Database
from ledger.settings import Settings
from worker.embedded import die_with_parent, embedded_redis

STOP_TIMEOUT_S = 10.0


class ProcessGroup:
    """Child processes started together and stopped together."""

    def __init__(self, env: Mapping[str, str], output: IO[bytes] | None = None) -> None:
        self.env = dict(env)
        self.output = output
        """Where the children write (standard output and error); None: this process's own."""
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, env=self.env, stdout=self.output, stderr=self.output, preexec_fn=die_with_parent
        )
        self.processes.append((name, process))
        return process

    def exited(self) -> list[tuple[str, int]]:
        return [(name, code) for name, p in self.processes if (code := p.poll()) is not None]

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def local_system(
    settings: Settings,
    *,
    port: int,
    workers: int,
    env: Mapping[str, str] | None = None,
    output: IO[bytes] | None = None,
) -> Iterator[ProcessGroup]:
    """Migrate, then start web, workers and clock; stop them all on exit.

    The children run with `env` (default: this process's environment), with
    the database and Redis of `settings`, and write to `output` (default: where
    this process writes).
    """
    migrate.upgrade(Database(settings.database_url).engine)
    with ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(embedded_redis())
        base = os.environ if env is None else env
        group = ProcessGroup({**base, "REDIS_URL": redis_url, "DATABASE_URL": settings.database_url}, output)
        stack.callback(group.stop)
        executable = os.path.join(os.path.dirname(sys.executable), "subledger")
        group.start(
            "web",
            [
                sys.executable, "-m", "gunicorn", "webapp:create_app()",
                "--bind", f"127.0.0.1:{port}", "--workers", "2", "--log-level", "warning",
            ],
        )  # fmt: skip
        for _ in range(workers):
            group.start("worker", [executable, "worker"])
        group.start("clock", [executable, "clock"])
        yield group


def _stop_requested(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve(settings: Settings, *, port: int, workers: int) -> int:
    """`subledger serve`: run until Ctrl-C (or SIGTERM) or until a process dies."""
    # Explicit, because a shell starting this in the background ignores SIGINT.
    signal.signal(signal.SIGINT, _stop_requested)
    signal.signal(signal.SIGTERM, _stop_requested)
    with local_system(settings, port=port, workers=workers) as group:
        print(f"subledger is running: http://127.0.0.1:{port}/  (Ctrl-C stops everything)", flush=True)
        try:
            while not (exited := group.exited()):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
    name, code = exited[0]
    print(f"subledger: the {name} process exited with status {code}; stopped everything", file=sys.stderr)
    return 1
