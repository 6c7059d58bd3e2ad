"""The metric formulas of mrr-rules.md §8, over numbers already summed for a period.

Money stays in integer minor units; a money metric that divides (ARPA, LTV) is
rounded half-up once, at the end. Rates are exact fractions, and a rate whose
denominator is 0 is None (reported as null), never 0.
"""

from __future__ import annotations

from fractions import Fraction

from ledger.mrr import round_half_up


def ratio(numerator: int | Fraction, denominator: int | Fraction) -> Fraction | None:
    """numerator / denominator, or None when the denominator is 0."""
    if denominator == 0:
        return None
    return Fraction(numerator) / Fraction(denominator)


def arr(mrr: int) -> int:
    return 12 * mrr


def net_new_mrr(new: int, expansion: int, reactivation: int, contraction: int, churn: int) -> int:
    """Signed sum: contraction and churn are negative already."""
    return new + expansion + reactivation + contraction + churn


def mrr_growth_rate(mrr_start: int, mrr_end: int) -> Fraction | None:
    return ratio(mrr_end - mrr_start, mrr_start)


def arpa(mrr: int, customers: int) -> int | None:
    """Average revenue per paying account, minor units."""
    value = ratio(mrr, customers)
    return None if value is None else round_half_up(value)


def customer_churn_rate(churned_customers: int, customers_start: int) -> Fraction | None:
    return ratio(churned_customers, customers_start)


def retention_rate(churned_customers: int, customers_start: int) -> Fraction | None:
    churn = customer_churn_rate(churned_customers, customers_start)
    return None if churn is None else 1 - churn


def gross_mrr_churn_rate(churn: int, contraction: int, mrr_start: int) -> Fraction | None:
    return ratio(-(churn + contraction), mrr_start)


def net_mrr_churn_rate(
    churn: int, contraction: int, expansion: int, reactivation: int, mrr_start: int
) -> Fraction | None:
    return ratio(-(churn + contraction + expansion + reactivation), mrr_start)


def expansion_rate(expansion: int, mrr_start: int) -> Fraction | None:
    return ratio(expansion, mrr_start)


def upsell_rate(customers_expanded: int, customers_start: int) -> Fraction | None:
    return ratio(customers_expanded, customers_start)


def nrr(mrr_end_of_start_customers: int, mrr_start: int) -> Fraction | None:
    """MRR at the end of P of the customers paying at its start, over MRR at its start."""
    return ratio(mrr_end_of_start_customers, mrr_start)


def grr(capped_mrr_end_of_start_customers: int, mrr_start: int) -> Fraction | None:
    """Σ min(end, start) over the customers paying at the start, over MRR at the start."""
    return ratio(capped_mrr_end_of_start_customers, mrr_start)


def quick_ratio(new: int, expansion: int, reactivation: int, contraction: int, churn: int) -> Fraction | None:
    return ratio(new + expansion + reactivation, -(contraction + churn))


def ltv(arpa_value: int | None, monthly_churn_rates: list[Fraction | None]) -> int | None:
    """ARPA over the average monthly customer churn rate (None when that rate is 0 or unknown).

    Months whose rate is undefined (no customers at their start) are left out
    of the average; with none left the LTV is undefined.
    """
    known = [rate for rate in monthly_churn_rates if rate is not None]
    if arpa_value is None or not known:
        return None
    average = sum(known, Fraction(0)) / len(known)
    value = ratio(arpa_value, average)
    return None if value is None else round_half_up(value)


def trial_conversion_rate(converted: int, ended: int) -> Fraction | None:
    return ratio(converted, ended)
