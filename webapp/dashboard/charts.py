"""Plotly figures as plain JSON: the page embeds them, static/dashboard.js draws them.

Amounts are plotted in major units (dollars, not cents) with the currency on
the axis, so the numbers a test reads back from the chart are the ledger's
divided by 10^exponent of the currency.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from ledger.fx import minor_unit_exponent
from ledger.queries import Cohort
from ledger.reporting import MOVEMENT_TYPES, Series

Figure = dict[str, Any]

COLOURS = {
    "mrr": "#1f5fbf",
    "new": "#2e7d32",
    "expansion": "#7cb342",
    "reactivation": "#00897b",
    "contraction": "#f57c00",
    "churn": "#c62828",
    "fx_adjustment": "#7e57c2",
}
"""Growth in greens, losses in orange and red, FX apart in purple."""

LABELS = {
    "new": "New",
    "expansion": "Expansion",
    "reactivation": "Reactivation",
    "contraction": "Contraction",
    "churn": "Churn",
    "fx_adjustment": "FX adjustment",
}


def major(amount: int | None, currency: str) -> float | None:
    """Minor units to major units (None stays None: a missing rate is not 0)."""
    return None if amount is None else amount / 10 ** minor_unit_exponent(currency)


def _axis(currency: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": currency.upper()}, "zeroline": True, "automargin": True, **extra}


HOVER_DATES = {"day": "%Y-%m-%d", "week": "week of %Y-%m-%d", "month": "%B %Y"}


def mrr_figure(series: Series, *, with_fx: bool, interval: str = "month") -> Figure:
    """MRR at the end of each bucket (line, top) over its movements (stacked bars, bottom)."""
    currency = series.currency
    x = [bucket.start.isoformat() for bucket in series.buckets]
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "MRR",
            "x": x,
            "y": [major(bucket.mrr, currency) for bucket in series.buckets],
            "line": {"color": COLOURS["mrr"], "width": 3},
            "yaxis": "y",
        }
    ]
    kinds = [*MOVEMENT_TYPES, "fx_adjustment"] if with_fx else list(MOVEMENT_TYPES)
    for kind in kinds:
        values = [
            bucket.fx_adjustment if kind == "fx_adjustment" else bucket.movements.get(kind) for bucket in series.buckets
        ]
        data.append(
            {
                "type": "bar",
                "name": LABELS[kind],
                "x": x,
                "y": [major(value, currency) for value in values],
                "marker": {"color": COLOURS[kind]},
                "yaxis": "y2",
            }
        )
    layout = {
        "barmode": "relative",
        "height": 460,
        "xaxis": {"anchor": "y2", "type": "date", "hoverformat": HOVER_DATES.get(interval, "%Y-%m-%d")},
        "yaxis": _axis(currency, domain=[0.42, 1], rangemode="tozero"),
        "yaxis2": _axis(currency, domain=[0, 0.34]),
        "legend": {"orientation": "h", "y": -0.12},
        "hovermode": "x unified",
    }
    return {"data": data, "layout": layout}


def cohort_figure(grid: Sequence[Cohort], *, revenue: bool, currency: str) -> Figure:
    """Retention heat-map: one row per cohort, one column per month since it started, in %."""
    width = max((len(c.retained_customers) for c in grid), default=0)
    z: list[list[float | None]] = []
    for cohort in grid:
        base = cohort.revenue if revenue else cohort.customers
        cells = cohort.retained_revenue if revenue else cohort.retained_customers
        row = [round(100 * value / base, 1) if base else None for value in cells]
        z.append(row + [None] * (width - len(row)))
    size = (lambda c: f"{major(c.revenue, currency):,.0f} {currency.upper()}") if revenue else (lambda c: c.customers)
    data = [
        {
            "type": "heatmap",
            "x": [f"+{index}" for index in range(width)],
            "y": [f"{c.month:%Y-%m} ({size(c)})" for c in grid],
            "z": z,
            "text": [["" if value is None else f"{value:.0f}%" for value in row] for row in z],
            "texttemplate": "%{text}",
            "zmin": 0,
            "zmax": 100,
            "colorscale": [[0, "#f1f5fb"], [0.5, "#8fb0e3"], [1, "#1f5fbf"]],
            "hovertemplate": "%{y}, month %{x}: %{z:.1f}%<extra></extra>",
            "hoverongaps": False,
            "showscale": False,
            "xgap": 2,
            "ygap": 2,
        }
    ]
    layout = {
        "height": 110 + 36 * len(grid),
        "margin": {"t": 8, "b": 48},
        "xaxis": {"title": {"text": "months since the first payment"}, "type": "category", "showgrid": False},
        "yaxis": {"autorange": "reversed", "automargin": True, "type": "category", "showgrid": False},
    }
    return {"data": data, "layout": layout}


def bars_figure(labels: Sequence[str], amounts: Sequence[int], *, currency: str) -> Figure:
    """Horizontal bars, largest at the top (MRR by plan)."""
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "y": list(labels),
            "x": [major(amount, currency) for amount in amounts],
            "marker": {"color": COLOURS["mrr"]},
            "hovertemplate": "%{y}: %{x:,.2f}<extra></extra>",
        }
    ]
    layout = {
        "height": 120 + 40 * len(labels),
        "xaxis": _axis(currency, rangemode="tozero"),
        "yaxis": {"autorange": "reversed", "automargin": True, "type": "category"},
    }
    return {"data": data, "layout": layout}


def timeline_figure(points: Sequence[tuple[date, int]], *, currency: str, today: date) -> Figure:
    """A customer's MRR as a step line: each movement day's closing MRR, held until the next."""
    x = [day.isoformat() for day, _ in points]
    y = [major(mrr, currency) for _, mrr in points]
    if points and points[-1][0] < today:
        x.append(today.isoformat())
        y.append(y[-1])
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"MRR ({currency.upper()})",
            "x": x,
            "y": y,
            "line": {"shape": "hv", "color": COLOURS["mrr"], "width": 3},
        }
    ]
    layout = {"height": 300, "xaxis": {"type": "date"}, "yaxis": _axis(currency, rangemode="tozero")}
    return {"data": data, "layout": layout}
