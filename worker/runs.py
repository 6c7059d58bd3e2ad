"""Bookkeeping of backfill, reconcile and catch-up runs: one row each, honest status.

A run is `ok` only if everything was read and applied; `partial` when it
finished with errors (listed); `failed` when it stopped. A `running` row whose
heartbeat is old belongs to a process that died. A backfill resumes the newest
unfinished backfill with the same parameters, from its checkpoints.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.errors import SubledgerError
from ledger.models import RunStatus, SyncCheckpoint, SyncRun

log = logging.getLogger("subledger.runs")

STALE_AFTER = timedelta(minutes=10)
"""A running run whose heartbeat is older than this is taken to have died."""

MAX_ERRORS_KEPT = 200
"""Errors stored on a run row; the count of all of them is kept in `counts`."""

NOTES_SHOWN = 3
"""Notes a run's summary line spells out; the log has each of them."""


class RunRefused(SubledgerError, RuntimeError):
    """The run cannot start (another one is running, no API key, …); the message says why."""


@dataclass
class RunReport:
    """What a run did, as the command line and the API report it."""

    run_id: str
    kind: str
    status: RunStatus = RunStatus.RUNNING
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    resumed: bool = False
    notes: list[str] = field(default_factory=list)
    """What the run did that is no error but a person should know (a discount valued as invoiced), each once."""

    def note(self, message: str) -> None:
        if message not in self.notes and len(self.notes) < MAX_ERRORS_KEPT:
            self.notes.append(message)
            log.info("%s: %s", self.kind, message)

    def error(self, message: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    @property
    def summary(self) -> str:
        counted = ", ".join(f"{value:,} {key}" for key, value in sorted(self.counts.items()) if key != "errors")
        tail = f"; {self.counts['errors']:,} errors (first: {self.errors[0]})" if self.errors else ""
        noted = f"; notes: {'; '.join(self.notes[:NOTES_SHOWN])}" if self.notes else ""
        if len(self.notes) > NOTES_SHOWN:
            noted += f"; {len(self.notes) - NOTES_SHOWN:,} more notes in the log"
        return f"{self.kind} {self.run_id} {self.status.value}: {counted or 'nothing to do'}{tail}{noted}"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _live(run: SyncRun, now: datetime) -> bool:
    return run.status == RunStatus.RUNNING.value and now - run.heartbeat_at < STALE_AFTER


def start_run(
    db: Database,
    kind: str,
    *,
    parameters: dict[str, Any],
    livemode: bool | None = None,
    stripe_api_version: str | None = None,
    exclusive: bool = True,
    resumable: bool = False,
) -> RunReport:
    """Record a new run (or resume the newest unfinished one with the same parameters).

    A run is resumed only with the Stripe API version it read with: a change of
    STRIPE_API_VERSION starts a new run, so no run holds objects of two shapes.
    """
    now = utcnow()
    with db.transaction() as session:
        runs = session.scalars(select(SyncRun).where(SyncRun.kind == kind).order_by(SyncRun.started_at.desc())).all()
        if exclusive:
            for run in runs:
                if _live(run, now):
                    raise RunRefused(
                        f"a {kind} is already running (run {run.id}, started {run.started_at:%Y-%m-%d %H:%M} UTC)"
                    )
        if resumable:
            for run in runs:
                same = run.parameters == parameters and run.stripe_api_version == stripe_api_version
                if run.status in (RunStatus.RUNNING.value, RunStatus.FAILED.value) and same:
                    run.status = RunStatus.RUNNING.value
                    run.heartbeat_at = now
                    run.finished_at = None
                    return RunReport(run.id, kind, counts=Counter(run.counts), resumed=True)
                if same:
                    break  # the newest run with these parameters finished: start afresh
        run_id = f"{kind}_{now:%Y%m%d%H%M%S}_{uuid.uuid4().hex[:8]}"
        session.add(
            SyncRun(
                id=run_id,
                kind=kind,
                livemode=livemode,
                stripe_api_version=stripe_api_version,
                started_at=now,
                heartbeat_at=now,
                status=RunStatus.RUNNING.value,
                parameters=parameters,
                counts={},
                errors=[],
            )
        )
    return RunReport(run_id, kind)


def heartbeat(db: Database, report: RunReport) -> None:
    """Say the run is alive, with its counts so far."""
    with db.transaction() as session:
        run = session.get(SyncRun, report.run_id)
        if run is not None:
            run.heartbeat_at = utcnow()
            run.counts = dict(report.counts)


def finish_run(db: Database, report: RunReport, status: RunStatus | None = None) -> RunReport:
    """Close the run: `ok` without errors, `partial` with some, or the status given."""
    report.status = status or (RunStatus.PARTIAL if report.errors else RunStatus.OK)
    now = utcnow()
    with db.transaction() as session:
        run = session.get(SyncRun, report.run_id)
        if run is not None:
            run.status = report.status.value
            run.finished_at = now
            run.heartbeat_at = now
            run.counts = dict(report.counts)
            run.errors = report.errors
    return report


def record_stop(db: Database, report: RunReport, exc: BaseException) -> None:
    """Mark a run failed because `exc` stopped it; the caller re-raises `exc`.

    The database may be what failed: then the failure is logged, and the
    original error is what the caller sees.
    """
    report.error(f"stopped: {type(exc).__name__}: {exc}")
    try:
        finish_run(db, report, RunStatus.FAILED)
    except Exception:
        log.exception("could not record the failed run", extra={"run": report.run_id})


def checkpoint(session: Session, run_id: str, stream: str) -> SyncCheckpoint | None:
    return session.get(SyncCheckpoint, (run_id, stream))


def save_checkpoint(
    session: Session,
    run_id: str,
    stream: str,
    *,
    cursor: str | None,
    objects: int,
    done: bool = False,
    reached: int | None = None,
    counts: dict[str, int] | None = None,
    errors: list[str] | None = None,
) -> None:
    """Record progress in the same transaction as the page's data, so a resume is exact."""
    row = session.get(SyncCheckpoint, (run_id, stream))
    if row is None:
        row = SyncCheckpoint(run_id=run_id, stream=stream, objects=0, done=False, updated_at=utcnow())
        session.add(row)
    row.cursor = cursor
    row.objects = objects
    row.done = done
    row.reached = None if done else reached
    row.counts = counts
    row.errors = errors
    row.updated_at = utcnow()
