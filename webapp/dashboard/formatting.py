"""Template filters: money in its currency, rates as percentages, instants in UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask import Flask

from webapp.report import money, rate


def signed_money(amount: object, currency: str) -> str:
    """A movement: + for growth, − for a loss."""
    text = money(amount, currency)
    return f"+{text}" if isinstance(amount, int) and amount > 0 else text.replace("-", "−", 1)


def utc(instant: datetime | date | None) -> str:
    if instant is None:
        return "—"
    if isinstance(instant, datetime):
        return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return instant.isoformat()


def percent(value: object) -> str:
    return rate(value)


def ratio(value: object) -> str:
    return rate(value, ratio=True)


def init_app(app: Flask) -> None:
    app.add_template_filter(money, "money")
    app.add_template_filter(signed_money, "signed_money")
    app.add_template_filter(percent, "percent")
    app.add_template_filter(ratio, "ratio")
    app.add_template_filter(utc, "utc")
