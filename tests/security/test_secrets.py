"""Secrets never leave the process: not in a response body, not in a log line
(extra fields and tracebacks included, as the JSON formatter writes them),
not in a command's error line — whatever fails around them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

import pytest
import responses
from flask import Flask

from ledger.logs import JsonFormatter
from ledger.settings import Settings
from tests.reliability.scenario import many_customers
from tests.stripe_payloads import WEBHOOK_SECRET, signed
from worker.cli import main

MakeApp = Callable[[Settings], Flask]
PASSWORD = "Pw-9f83kQz-never-logged"
API_TOKEN = "tok-5c1d2e-never-logged"
STRIPE_KEY = "sk_test_51Hc0nf1dent1alKey0000never"


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def leaked(secrets: Iterable[str], caplog: pytest.LogCaptureFixture, *outputs: str | bytes) -> list[str]:
    """The secrets found in any log record (as JSON, with extras and traceback) or output."""
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    texts = [logged, caplog.text, *(out.decode(errors="replace") if isinstance(out, bytes) else out for out in outputs)]
    return [secret for secret in secrets if any(secret in text for text in texts)]


def test_refused_webhooks_and_requests_never_echo_a_secret(
    make_app: MakeApp, settings: Settings, everything_logged: pytest.LogCaptureFixture
) -> None:
    client = make_app(replace(settings, api_token=API_TOKEN)).test_client()
    [event] = many_customers(1)[:1]
    bodies = []
    for secret in ("whsec_wrong", WEBHOOK_SECRET + "x"):
        body, headers = signed(event, secret=secret)
        bodies.append(client.post("/webhooks/stripe", data=body, headers=headers).get_data())
    bodies.append(client.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": WEBHOOK_SECRET}).get_data())
    for path in ("/api/v1/mrr", "/metrics", "/api/v1/customers/cus_1"):
        bodies.append(client.get(path, headers={"Authorization": f"Bearer {API_TOKEN[:-1]}"}).get_data())
    bodies.append(client.post("/login", data={"token": API_TOKEN[:-1]}).get_data())
    assert any(record.getMessage() == "webhook rejected" for record in everything_logged.records)
    assert leaked([WEBHOOK_SECRET, API_TOKEN], everything_logged, *bodies) == []


def test_a_database_url_password_stays_out_of_answers_and_logs(
    make_app: MakeApp, settings: Settings, everything_logged: pytest.LogCaptureFixture
) -> None:
    broken = replace(
        settings,
        database_url=f"postgresql://subledger:{PASSWORD}@127.0.0.1:1/subledger",
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:1/0",
        api_token=API_TOKEN,
    )
    client = make_app(broken).test_client()
    [event] = many_customers(1)[:1]
    body, headers = signed(event)
    answers = [client.post("/webhooks/stripe", data=body, headers=headers)]
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    answers += [client.get(path, headers=auth) for path in ("/healthz", "/metrics", "/api/v1/mrr", "/api/v1/summary")]
    assert [answer.status_code for answer in answers[:3]] == [503, 503, 200]
    assert leaked([PASSWORD], everything_logged, *(answer.get_data() for answer in answers)) == []
    assert b'subledger_source_up{source="database"} 0.0' in answers[2].get_data()


@pytest.mark.parametrize(
    ("command", "environment"),
    [
        (["replay"], {"DATABASE_URL": f"postgresql://subledger:{PASSWORD}@127.0.0.1:1/subledger"}),
        (["rebuild"], {"DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_database"}),
        (["db", "upgrade"], {"DATABASE_URL": f"mysql://subledger:{PASSWORD}@127.0.0.1/subledger"}),
        (["worker", "--burst"], {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0"}),
    ],
)
def test_a_command_with_a_bad_url_names_the_problem_not_the_password(
    command: list[str],
    environment: dict[str, str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(command) != 0
    out, err = capsys.readouterr()
    assert err.startswith("subledger: ")
    assert leaked([PASSWORD], everything_logged, out, err) == []


@responses.activate
def test_a_refused_stripe_key_is_not_repeated(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    everything_logged: pytest.LogCaptureFixture,
    db,
) -> None:
    error = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****ever"}}
    for path in ("/v1/events", "/v1/subscriptions"):  # reconcile reads the events first
        responses.get(f"https://stripe.test{path}", json=error, status=401)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("STRIPE_API_KEY", STRIPE_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", "https://stripe.test")
    assert main(["reconcile"]) != 0
    out, err = capsys.readouterr()
    assert "STRIPE_API_KEY" in out + err
    assert leaked([STRIPE_KEY], everything_logged, out, err) == []
