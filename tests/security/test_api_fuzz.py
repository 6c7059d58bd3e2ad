"""Schemathesis fuzzes every `/api/v1` operation of the OpenAPI description against the app, on a ledger
filled through the real pipeline: no answer is a 5xx, every answer conforms to the description, and a 400
names a parameter the request sent."""

from __future__ import annotations

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from ledger.db import Database
from tests.security.test_api_input import AUTH, seeded  # noqa: F401  (the fixture)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]
"""Not `positive_data_acceptance`: a well-formed value can still name nothing the account has (a currency
it never billed in), and that is a 400 naming the parameter."""

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def test_every_operation_answers_as_described_and_never_5xx(app: Flask, seeded: Database) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/api/v1/mrr", "/api/v1/customers/{customer_id}"}
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def answers(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **AUTH}
            response = case.call()
            assert response.status_code < 500, (case.path, case.query, response.text[:300])
            case.validate_response(response, checks=CHECKS)
            if response.status_code == 400:
                error = response.json()["error"]
                sent = {**(case.query or {}), **(case.path_parameters or {})}
                assert any(name in error for name in sent), (case.path, case.query, error)

        answers()
