"""The formulas of docs/mrr-rules.md §8, the metrics table, with docs/mrr-rules.md worked examples 9–11."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ledger import metrics


def test_worked_example_9_gross_and_net_mrr_churn() -> None:
    # MRR_start $100; churn −$10, contraction −$10, expansion +$10.
    assert metrics.gross_mrr_churn_rate(churn=-1000, contraction=-1000, mrr_start=10000) == Fraction(1, 5)
    assert metrics.net_mrr_churn_rate(
        churn=-1000, contraction=-1000, expansion=1000, reactivation=0, mrr_start=10000
    ) == Fraction(1, 10)


def test_worked_example_10_arpa() -> None:
    paying = [10000, 10000, 30000, 50000, 50000]
    assert metrics.arpa(sum(paying), len(paying)) == 30000


def test_worked_example_11_quick_ratio() -> None:
    ratio = metrics.quick_ratio(new=2_000_000, expansion=800_000, reactivation=0, contraction=-300_000, churn=-500_000)
    assert ratio == Fraction(7, 2)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(metrics.mrr_growth_rate(0, 500), id="§8 MRR growth rate with MRR_start 0"),
        pytest.param(metrics.arpa(0, 0), id="§8 ARPA with no customers"),
        pytest.param(metrics.customer_churn_rate(0, 0), id="§8 customer churn with no customers at start"),
        pytest.param(metrics.retention_rate(0, 0), id="§8 retention with no customers at start"),
        pytest.param(metrics.nrr(100, 0), id="§8 NRR with MRR_start 0"),
        pytest.param(metrics.quick_ratio(100, 0, 0, 0, 0), id="§8 quick ratio with no losses"),
        pytest.param(metrics.ltv(5000, [Fraction(0), Fraction(0)]), id="§8 LTV when churn rate is 0"),
        pytest.param(metrics.ltv(5000, [None, None]), id="§8 LTV with no month defined"),
        pytest.param(metrics.trial_conversion_rate(0, 0), id="§8 trial conversion with no trial ended"),
    ],
)
def test_a_rate_whose_denominator_is_0_is_none(value: object) -> None:
    assert value is None


def test_rates_are_exact() -> None:
    assert metrics.mrr_growth_rate(30000, 40000) == Fraction(1, 3)
    assert metrics.retention_rate(1, 8) == Fraction(7, 8)
    assert metrics.grr(9000, 10000) == Fraction(9, 10)
    assert metrics.upsell_rate(3, 12) == Fraction(1, 4)
    assert metrics.expansion_rate(500, 10000) == Fraction(1, 20)


def test_ltv_is_arpa_over_the_average_monthly_churn_rate() -> None:
    rates = [Fraction(1, 20), Fraction(1, 10), None, Fraction(0), Fraction(1, 20), Fraction(1, 10)]
    # average of the five defined months = 0.06 → 300.00 / 0.06 = 5,000.00
    assert metrics.ltv(30000, rates) == 500000


def test_arr_and_net_new() -> None:
    assert metrics.arr(2_500_000) == 30_000_000  # docs/mrr-rules.md worked example 2: €25,000 MRR → €300,000 ARR
    assert metrics.net_new_mrr(new=100, expansion=50, reactivation=25, contraction=-10, churn=-40) == 125
