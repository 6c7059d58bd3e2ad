"""GET /api/v1/reconciliation and the API's bearer-token door."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ledger.db import Database
from ledger.models import DriftItem, RunStatus
from ledger.settings import Settings
from tests.ledger.subscription_payloads import utc
from worker.runs import finish_run, start_run

URL = "/api/v1/reconciliation"
AUTH = {"Authorization": "Bearer test-token"}


def reconcile_run(db: Database, *drift: tuple[str, int, int]) -> str:
    """A finished reconcile run with drift items (subscription, ledger MRR, Stripe MRR)."""
    report = start_run(db, "reconcile", parameters={})
    with db.transaction() as session:
        for subscription_id, ledger_mrr, stripe_mrr in drift:
            session.add(
                DriftItem(
                    run_id=report.run_id,
                    subscription_id=subscription_id,
                    customer_id=f"cus_{subscription_id}",
                    currency="usd",
                    ledger_mrr=ledger_mrr,
                    stripe_mrr=stripe_mrr,
                    difference=stripe_mrr - ledger_mrr,
                    action="recorded Stripe's state (canceled), effective 2024-03-05T00:00:00Z",
                    effective_at=utc(3, 5),
                )
            )
    report.counts.update(subscriptions_checked=len(drift), drifted=len(drift))
    finish_run(db, report)
    return report.run_id


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no Authorization"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong token"),
        pytest.param({"Authorization": "Basic dGVzdC10b2tlbg=="}, id="not a bearer token"),
        pytest.param({"Authorization": "Bearer "}, id="empty token"),
    ],
)
def test_requests_without_the_token_get_401(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get(URL, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "SUBLEDGER_API_TOKEN" in response.get_json()["error"]


def test_without_a_configured_token_the_api_refuses_to_serve(
    settings: Settings, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(replace(settings, api_token=None)).test_client()
    response = client.get(URL, headers=AUTH)
    assert (response.status_code, response.get_json()) == (503, {"error": "SUBLEDGER_API_TOKEN is not configured"})


def test_an_account_never_reconciled_has_no_runs(client: FlaskClient, db: Database) -> None:
    response = client.get(URL, headers=AUTH)
    assert (response.status_code, response.get_json()) == (200, {"runs": []})


def test_runs_come_newest_first_with_their_drift(client: FlaskClient, db: Database) -> None:
    older = reconcile_run(db, ("sub_1", 10000, 0))
    newer = reconcile_run(db)
    start_run(db, "catchup", parameters={})  # not a reconciliation

    runs = client.get(URL, headers=AUTH).get_json()["runs"]

    assert [run["id"] for run in runs] == [newer, older]
    run = runs[1]
    assert set(run) == {"id", "kind", "status", "started_at", "finished_at", "counts", "errors", "drift"}
    assert (run["kind"], run["status"], run["errors"]) == ("reconcile", "ok", [])
    assert run["counts"] == {"subscriptions_checked": 1, "drifted": 1}
    assert run["started_at"].endswith("Z") and run["finished_at"].endswith("Z")
    assert run["drift"] == [
        {
            "subscription": "sub_1",
            "customer": "cus_sub_1",
            "currency": "usd",
            "ledger_mrr": 10000,
            "stripe_mrr": 0,
            "difference": -10000,
            "action": "recorded Stripe's state (canceled), effective 2024-03-05T00:00:00Z",
            "effective_at": "2024-03-05T00:00:00Z",
            "dated_by": "run",
        }
    ]


def test_a_running_run_has_no_finish_time(client: FlaskClient, db: Database) -> None:
    report = start_run(db, "reconcile", parameters={})
    [run] = client.get(URL, headers=AUTH).get_json()["runs"]
    assert (run["id"], run["status"], run["finished_at"]) == (report.run_id, RunStatus.RUNNING.value, None)


def test_limit_keeps_the_latest_runs(client: FlaskClient, db: Database) -> None:
    reconcile_run(db)
    latest = reconcile_run(db)
    runs = client.get(f"{URL}?limit=1", headers=AUTH).get_json()["runs"]
    assert [run["id"] for run in runs] == [latest]


@pytest.mark.parametrize("limit", ["0", "101", "ten", "1.5", "-1", ""])
def test_a_bad_limit_is_400_naming_it(client: FlaskClient, limit: str) -> None:
    response = client.get(f"{URL}?limit={limit}", headers=AUTH)
    assert (response.status_code, response.get_json()) == (400, {"error": "limit must be a whole number from 1 to 100"})


def test_a_bad_format_is_400_naming_it(client: FlaskClient) -> None:
    response = client.get(f"{URL}?format=xml", headers=AUTH)
    assert (response.status_code, response.get_json()) == (400, {"error": "format must be json or csv"})


@pytest.mark.parametrize(
    ("query", "accept"),
    [pytest.param("?format=csv", "*/*", id="format=csv"), pytest.param("", "text/csv", id="Accept: text/csv")],
)
def test_drift_as_csv(client: FlaskClient, db: Database, query: str, accept: str) -> None:
    run_id = reconcile_run(db, ("sub_1", 10000, 0), ("sub_2", 0, 5000))
    response = client.get(f"{URL}{query}", headers={**AUTH, "Accept": accept})
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == [
        "run",
        "subscription",
        "customer",
        "currency",
        "ledger_mrr",
        "stripe_mrr",
        "difference",
        "action",
        "effective_at",
        "dated_by",
    ]
    assert [row[:7] for row in rows[1:]] == [
        [run_id, "sub_1", "cus_sub_1", "usd", "10000", "0", "-10000"],
        [run_id, "sub_2", "cus_sub_2", "usd", "0", "5000", "5000"],
    ]


def test_json_is_the_default_for_a_browser(client: FlaskClient) -> None:
    response = client.get(URL, headers={**AUTH, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert response.mimetype == "application/json"
