"""Log lines as JSON objects, one per line, with every `extra` field kept.

The default formatter prints the message alone and drops the `extra` fields
(event id, customer, movement summary, duration) that make a line useful to a
log search; this one keeps them. Shared by the web process and the command
line, which is why it lives in the package both depend on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""Attributes every LogRecord has; anything else on a record came from `extra`."""


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", **extra}`, plus `exc` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(loggers: Iterable[str] = ("subledger",)) -> None:
    """JSON lines on stderr, INFO for `loggers`, WARNING for everything else.

    Like `logging.basicConfig`, it leaves a root logger that already has
    handlers alone (a deployment's own logging configuration, a test runner),
    so calling it more than once is harmless.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.INFO)
