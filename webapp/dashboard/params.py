"""Query parameters of the dashboard's pages, checked: a bad one is a 400 page naming it."""

from __future__ import annotations

from datetime import date, datetime

from flask import abort, request

from ledger.reporting import Interval
from ledger.rollup import next_month

DEFAULT_MONTHS = 12
"""The date-range picker's default: the last 12 months, this one included."""

MAX_MONTHS = 120
"""Longest range a page draws (a day-by-day chart of ten years is already 3,650 points)."""

INTERVALS: tuple[Interval, ...] = ("day", "week", "month")


def shift_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_end(month: date) -> date:
    return date.fromordinal(next_month(month).toordinal() - 1)


def month(name: str, default: date) -> date:
    """A `YYYY-MM` parameter, as the first day of that month."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    try:
        return datetime.strptime(raw, "%Y-%m").date()
    except ValueError:
        abort(400, description=f"{name} must be a month written YYYY-MM (got {raw!r})")


def day(name: str) -> date | None:
    """A `YYYY-MM-DD` parameter, or None when absent."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        abort(400, description=f"{name} must be a date written YYYY-MM-DD (got {raw!r})")


def month_range(today: date) -> tuple[date, date]:
    """`start` and `end` months: the last DEFAULT_MONTHS months unless given."""
    this_month = today.replace(day=1)
    end = month("end", this_month)
    start = month("start", shift_months(end, 1 - DEFAULT_MONTHS))
    if end > this_month:
        abort(400, description=f"end must not be after this month ({this_month:%Y-%m})")
    if start > end:
        abort(400, description="start must not be after end")
    if (end.year - start.year) * 12 + end.month - start.month >= MAX_MONTHS:
        abort(400, description=f"start and end must be at most {MAX_MONTHS} months apart")
    return start, end


def interval(default: Interval = "month") -> Interval:
    raw = request.args.get("interval", "").strip() or default
    for known in INTERVALS:
        if raw == known:
            return known
    abort(400, description=f"interval must be one of {', '.join(INTERVALS)} (got {raw!r})")


def choices(name: str, allowed: tuple[str, ...]) -> list[str]:
    """A repeatable parameter (`?type=new&type=churn`) whose values must be among `allowed`."""
    values = [value.strip() for value in request.args.getlist(name) if value.strip()]
    for value in values:
        if value not in allowed:
            abort(400, description=f"{name} must be one of {', '.join(allowed)} (got {value!r})")
    return values


def text(name: str, *, max_length: int = 255) -> str | None:
    raw = request.args.get(name, "").strip()
    if len(raw) > max_length:
        abort(400, description=f"{name} must be at most {max_length} characters")
    return raw or None
