"""`subledger report`: a month's KPIs and movement bridge in the terminal, or as JSON / CSV."""

from __future__ import annotations

import csv
import io
import json
from fractions import Fraction

from rich.console import Console
from rich.table import Table

from ledger.fx import minor_unit_exponent

BRIDGE = ("mrr_start", "new", "expansion", "reactivation", "contraction", "churn", "fx_adjustment", "mrr")
RATES = (
    "mrr_growth_rate",
    "customer_churn_rate",
    "retention_rate",
    "gross_mrr_churn_rate",
    "net_mrr_churn_rate",
    "expansion_rate",
    "upsell_rate",
    "nrr",
    "grr",
    "quick_ratio",
    "trial_conversion_rate",
)
MONEY = ("arr", "arpa", "ltv", "scheduled_churn", "net_new")
COUNTS = ("customers_start", "customers", "new_customers", "churned_customers", "reactivated_customers")


def plain(summary: dict[str, object]) -> dict[str, object]:
    """JSON-ready: rates as decimal fractions (6 places), money as integer minor units."""
    return {key: round(float(value), 6) if isinstance(value, Fraction) else value for key, value in summary.items()}


def money(amount: object, currency: str) -> str:
    if not isinstance(amount, int):
        return "—"
    digits = minor_unit_exponent(currency)
    value = amount / 10**digits
    return f"{value:,.{digits}f} {currency.upper()}"


def rate(value: object, *, ratio: bool = False) -> str:
    """A rate as a percentage (a ratio such as the quick ratio as 3.50x); — when undefined."""
    if not isinstance(value, Fraction | float | int):
        return "—"
    return f"{float(value):.2f}x" if ratio else f"{float(value):.2%}"


def render_table(summaries: list[dict[str, object]], console: Console) -> None:
    for summary in summaries:
        currency = str(summary["currency"])
        bridge = Table(title=f"MRR bridge {summary['month']} ({currency.upper()})", show_header=False)
        for key in BRIDGE:
            bridge.add_row(key.replace("_", " "), money(summary.get(key), currency))
        kpis = Table(title=f"KPIs {summary['month']}", show_header=False)
        for key in COUNTS:
            kpis.add_row(key.replace("_", " "), str(summary[key]))
        for key in MONEY:
            kpis.add_row(key.replace("_", " "), money(summary[key], currency))
        for key in RATES:
            kpis.add_row(key.replace("_", " "), rate(summary[key], ratio=key == "quick_ratio"))
        console.print(bridge)
        console.print(kpis)


def render_json(summaries: list[dict[str, object]]) -> str:
    rows = [plain(s) for s in summaries]
    return json.dumps(rows[0] if len(rows) == 1 else {"by_currency": rows}, indent=2, default=str)


def render_csv(summaries: list[dict[str, object]]) -> str:
    out = io.StringIO()
    rows = [plain(s) for s in summaries]
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
