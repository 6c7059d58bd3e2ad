"""Who may see what: the API and /metrics want the bearer token (401 without
it, or with a wrong one), every dashboard page wants a login, and the static
route serves the static folder and nothing outside it."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ledger.settings import Settings
from tests.reliability.scenario import gunicorn

PUBLIC_ENDPOINTS = {
    "static",
    "webhooks.receive_stripe_event",
    "health.healthz",
    "dashboard.login",
    "dashboard.logout",
    "openapi.document",
    "openapi.page",
}
"""No token, no login: the API's description holds no data."""
SAMPLE_ARGUMENTS = {"customer_id": "cus_001", "filename": "dashboard.css"}


def get_paths(app: Flask, *, token_protected: bool) -> list[str]:
    """GET routes of the app: those behind the bearer token, or the dashboard pages."""
    paths = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        bearer = rule.rule.startswith("/api/") or rule.rule == "/metrics"
        if bearer == token_protected and not rule.endpoint.endswith("plotly_js"):
            path = rule.rule
            for name, value in SAMPLE_ARGUMENTS.items():
                path = path.replace(f"<{name}>", value).replace(f"<path:{name}>", value)
            paths.append(path)
    return sorted(paths)


def test_the_token_protected_routes_are_the_api_and_metrics(app: Flask) -> None:
    paths = get_paths(app, token_protected=True)
    assert "/metrics" in paths and "/api/v1/mrr" in paths


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong-token", "Bearer test-token-and-more", "Basic dGVzdC10b2tlbg==",
     "test-token", "Bearer test-toke", "Token test-token"],
)  # fmt: skip
def test_the_api_and_metrics_refuse_a_missing_or_wrong_token(
    app: Flask, client: FlaskClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in get_paths(app, token_protected=True):
        response = client.get(path, headers=headers, query_string={"token": "test-token", "access_token": "test-token"})
        assert response.status_code == 401, (path, authorization)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "test-token" not in response.get_data(as_text=True)


def test_the_right_token_opens_them(app: Flask, client: FlaskClient, db) -> None:
    for path in get_paths(app, token_protected=True):
        assert client.get(path, headers={"Authorization": "Bearer test-token"}).status_code in (200, 404), path


def test_every_dashboard_page_sends_a_visitor_without_login_to_the_login_page(app: Flask, client: FlaskClient) -> None:
    pages = get_paths(app, token_protected=False)
    assert pages, "no dashboard page to check"
    for page in pages:
        response = client.get(page)
        assert response.status_code in (302, 303), page
        assert urlsplit(response.headers["Location"]).path == "/login", page


def test_a_forged_session_cookie_is_no_login(app: Flask, client: FlaskClient) -> None:
    client.set_cookie("session", "eyJsb2dpbiI6dHJ1ZX0.forged.signature")
    for page in get_paths(app, token_protected=False):
        assert client.get(page).status_code in (302, 303), page


TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%252e%252e/%252e%252e/etc/passwd",
    "/static/..%5c..%5c..%5cetc%5cpasswd",
    "/static/..\\..\\..\\etc\\passwd",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/....//....//....//etc/passwd",
    "/static/../__init__.py",
    "/static/%2e%2e/__init__.py",
    "/static/..%2f__init__.py",
    "/static/dashboard.css/../../__init__.py",
    "/static/dashboard.css%00.py",
    "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/static/..;/__init__.py",
]
OUTSIDE = ("root:x:0:0", "def create_app")


def answered_nothing_outside(status: int, body: bytes) -> bool:
    return status in (400, 404, 308, 301) and not any(secret.encode() in body for secret in OUTSIDE)


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_paths_never_leave_the_static_folder(client: FlaskClient, path: str) -> None:
    with client.get(path) as response:
        assert answered_nothing_outside(response.status_code, response.get_data()), (path, response.status_code)


def test_static_files_are_served(client: FlaskClient, project_root: Path) -> None:
    with client.get("/static/dashboard.css") as response:
        assert response.get_data() == (project_root / "webapp/static/dashboard.css").read_bytes()


@pytest.mark.slow
def test_traversal_sent_verbatim_to_gunicorn_is_refused_too(settings: Settings, tmp_path: Path) -> None:
    with gunicorn(settings, tmp_path / "gunicorn.log", workers=1) as url:
        netloc = urlsplit(url).netloc
        for path in TRAVERSALS:
            connection = http.client.HTTPConnection(netloc, timeout=10)
            try:
                connection.request("GET", path)  # no client-side normalisation of `..`
                response = connection.getresponse()
                assert answered_nothing_outside(response.status, response.read()), (path, response.status)
            finally:
                connection.close()
