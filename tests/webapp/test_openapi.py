"""The API's OpenAPI description: complete, served, rendered, and able to catch a wrong answer.

Every API answer the rest of the suite receives is checked against it too
(`tests/openapi_check.ValidatingClient`, the client of every test app).
"""

from __future__ import annotations

import json
import re

import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator

from tests.openapi_check import check_answer
from webapp.openapi import DOCUMENT


def routes(app: Flask) -> set[str]:
    return {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and "GET" in (rule.methods or ())
    }


def test_every_api_route_is_described_and_nothing_else(app: Flask) -> None:
    assert routes(app) == set(DOCUMENT["paths"])


def test_the_description_is_served_without_a_token_and_its_schemas_are_valid(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    served = response.get_json()
    assert served == json.loads(json.dumps(DOCUMENT)) and served["openapi"].startswith("3.1")
    for schema in served["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_docs_page_lists_every_path_and_fetches_nothing(client: FlaskClient) -> None:
    html = client.get("/api/v1/docs").get_data(as_text=True)
    assert all(path in html for path in DOCUMENT["paths"])
    assert "<script" not in html and not re.search(r"(src|href)=\"https?://", html)


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        (
            {"data": [{"id": 1, "date": "2024-03-20", "customer": "cus_b", "type": "churn"}], "next_cursor": None},
            "amount",
        ),
        ({"data": [], "next_cursor": 7}, "next_cursor"),
    ],
)
def test_an_answer_that_strays_from_the_description_fails_the_test_that_received_it(
    body: dict[str, object], wrong: str
) -> None:
    response = Response(json.dumps(body), mimetype="application/json")
    with pytest.raises(AssertionError, match=wrong):
        check_answer("GET", "/api/v1/movements", response)  # type: ignore[arg-type]


def test_a_status_the_description_does_not_give_fails() -> None:
    response = Response("{}", status=418, mimetype="application/json")
    with pytest.raises(AssertionError, match="418"):
        check_answer("GET", "/api/v1/summary", response)  # type: ignore[arg-type]
