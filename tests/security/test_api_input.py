"""SQL-looking, malformed, huge and unicode values in every parameter of every
`/api/v1` endpoint: a 400 naming the parameter (or a 404, or an answer) —
never a 500, and the ledger is the same afterwards."""

from __future__ import annotations

import os
from datetime import date
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ledger.db import Database
from ledger.settings import Settings
from tests.reliability.scenario import ledger, many_customers, statuses, store
from worker import processing
from worker.recompute import after_apply_for

AUTH = {"Authorization": "Bearer test-token"}
PARAMETERS = ("start", "end", "interval", "type", "customer", "limit", "cursor", "month", "format", "currency")

LAST_SAFE_DAY = date(9998, 12, 31)
"""Later ends crash /api/v1/mrr (see test_an_end_in_the_last_representable_year_is_a_400)."""

SQL_LOOKING = [
    "' OR '1'='1",
    "1; DROP TABLE movements; --",
    "2024-01-01' UNION SELECT id, payload FROM stripe_events --",
    "cus_000' --",
    '"; DELETE FROM stripe_events; --',
    "%' OR 1=1 --",
    "1 OR 1=1",
    "0x27",
    "\\'; SELECT pg_sleep(10); --",
]
MALFORMED = [
    "", " ", "-1", "0", "-0", "+5", "1e9", "1.5", "NaN", "inf", "99999999999999999999999", "٣",  # Arabic-Indic 3
    "0001-01-01", "9000-12-31", "2024-02-30", "2024-13", "2024-00", "10000-01-01", "2024-1-1", "24-01",
    "2024-01-01T00:00:00Z", "0000-01", "9000-12", "month", "day", "week", "year", "csv", "json", "xml",
    "new,churn", "new,,", ",", "expansion,bogus", "usd", "USD", "eur", "x" * 5000, "%00", "\ud7ff",
    "../../etc/passwd", "<script>alert(1)</script>", "{{7*7}}", "${jndi:ldap://x}",
]  # fmt: skip
# NUL: see test_a_nul_byte_in_a_customer_id_is_a_400; lone surrogates cannot even be sent.
no_nul = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
values = st.one_of(
    st.sampled_from(SQL_LOOKING + MALFORMED),
    st.text(no_nul, max_size=50),
    st.integers(-(2**70), 2**70).map(str),
    st.dates(max_value=LAST_SAFE_DAY).map(lambda day: day.isoformat()),
    st.dates(max_value=LAST_SAFE_DAY).map(lambda day: day.strftime("%Y-%m")),
)
queries = st.dictionaries(st.sampled_from(PARAMETERS), values, max_size=5)
FUZZ = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def api_paths(app: Flask) -> list[str]:
    paths = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and "GET" in (rule.methods or ()):
            paths.append(rule.rule.replace("<customer_id>", "cus_001"))
    return sorted(paths)


@pytest.fixture
def seeded(db: Database, settings: Settings) -> Database:
    store(db, many_customers(6))
    processing.drain(db, None, budget_s=60, after_apply=after_apply_for(settings))
    return db


def check(client: FlaskClient, path: str, query: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    response = client.get(path, query_string=query, headers={**AUTH, **(headers or {})})
    assert response.status_code in (200, 400, 404), (path, query, response.status_code, response.get_data()[:300])
    if response.status_code == 400:
        assert response.get_json()["error"]


def test_every_api_endpoint_is_covered(app: Flask) -> None:
    assert {"/api/v1/mrr", "/api/v1/movements", "/api/v1/summary", "/api/v1/cohorts"} <= set(api_paths(app))


@FUZZ
@given(query=queries, accept=st.sampled_from(["application/json", "text/csv", "*/*", "text/html;q=0.1, x/y", ""]))
def test_hostile_parameters_never_cause_a_500(
    app: Flask, client: FlaskClient, seeded: Database, query: dict[str, Any], accept: str
) -> None:
    before = ledger(seeded)
    for path in api_paths(app):
        check(client, path, query, {"Accept": accept})
    assert ledger(seeded) == before


@FUZZ
@given(customer=st.one_of(st.sampled_from(SQL_LOOKING), st.text(no_nul, min_size=1, max_size=300)))
def test_hostile_customer_ids_are_404s(client: FlaskClient, seeded: Database, customer: str) -> None:
    from urllib.parse import quote

    response = client.get(f"/api/v1/customers/{quote(customer, safe='')}", headers=AUTH)
    assert response.status_code in (200, 308, 400, 404), (customer, response.status_code)  # 308: `//` merged


@pytest.mark.parametrize("value", SQL_LOOKING)
def test_sql_in_any_parameter_leaves_every_table_intact(
    app: Flask, client: FlaskClient, seeded: Database, value: str
) -> None:
    before = (ledger(seeded), statuses(seeded))
    for path in api_paths(app):
        for name in PARAMETERS:
            check(client, path, {name: value})
    assert (ledger(seeded), statuses(seeded)) == before


@pytest.mark.parametrize("query", [{"end": "9999-12"}, {"end": "9999-12-31", "interval": "day"}])
def test_an_end_in_the_last_representable_year_is_a_400(client: FlaskClient, seeded: Database, query: dict) -> None:
    check(client, "/api/v1/mrr", query)


ON_POSTGRESQL = os.environ.get("DATABASE_URL", "").startswith("postgresql")


@pytest.mark.parametrize(
    ("path", "query"), [("/api/v1/customers/a%00b", {}), ("/api/v1/movements", {"customer": "\x00"})]
)
def test_a_nul_byte_in_a_customer_id_is_a_400(client: FlaskClient, seeded: Database, path: str, query: dict) -> None:
    check(client, path, query)
