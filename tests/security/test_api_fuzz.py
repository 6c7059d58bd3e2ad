"""Schemathesis fuzzes every `/api/v1` operation of the OpenAPI description against the app, on a ledger
filled through the real pipeline: no answer is a 5xx, every answer conforms to the description, and a 400
names a parameter the request sent."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from werkzeug.serving import make_server

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


def test_the_schemathesis_command_finds_nothing_over_http(
    app: Flask,
    seeded: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`st run` as a user would run it, against the app over HTTP: its coverage phase also sends edge values
    (empty, boundary, wrong type) that the generated cases above rarely do."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"http://127.0.0.1:{httpd.server_port}/api/v1/openapi.json",
                *("--header", f"Authorization: {AUTH['Authorization']}"),
                *("--checks", ",".join(check.__name__ for check in CHECKS)),
                *("--max-examples", "50", "--seed", "1", "--no-color"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,  # where it keeps its cache (.schemathesis/)
        )
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
    summary = result.stdout.strip().splitlines()[-1]  # "== No issues found in 6.1s ==", or "== 1 warning in …"
    assert result.returncode == 0, result.stdout[-4000:]
    assert "failure" not in summary and "error" not in summary, result.stdout[-4000:]
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", result.stdout)
    assert tested is not None and len(set(tested.groups())) == 1, result.stdout[-4000:]  # every operation
    assert re.search(r"(\d+) generated, \1 passed", result.stdout), result.stdout[-4000:]
