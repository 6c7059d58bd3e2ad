"""Checks answers of the API against its OpenAPI description (`webapp.openapi.DOCUMENT`).

`ValidatingClient` is the test client of every app the suite builds: each JSON
answer it receives from an `/api/v1` path must match the schema the description
gives for that path, method and status, so every API test is also a test of the
description.
"""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from werkzeug.test import TestResponse

from webapp.openapi import DOCUMENT

_TEMPLATES = [
    (re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"), path) for path in DOCUMENT["paths"]
]


def described(path: str) -> str | None:
    """The description's path template for a request path (`/api/v1/customers/{customer_id}`), if any."""
    return next((template for pattern, template in _TEMPLATES if pattern.match(path)), None)


def check_answer(method: str, path: str, response: TestResponse) -> None:
    """Raise AssertionError unless the answer is one the description allows."""
    template = described(path)
    assert template is not None, f"{path} is not in the OpenAPI description"
    operation = DOCUMENT["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {template} is not in the OpenAPI description"
    answer = operation["responses"].get(str(response.status_code))
    assert answer is not None, f"{method} {template} answered {response.status_code}, which it does not describe"
    kind = response.mimetype
    assert kind in answer["content"], f"{method} {template} {response.status_code}: {kind} is not described"
    if kind != "application/json":
        return
    schema: dict[str, Any] = {**answer["content"][kind]["schema"], "components": DOCUMENT["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(response.get_json()), key=str)
    assert not errors, f"{method} {path} {response.status_code}: " + "; ".join(
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors[:5]
    )


class ValidatingClient(FlaskClient):
    """A test client that checks each `/api/v1` answer against the description."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        request = response.request
        # A path no route takes (Flask's own 404, or 308 to merge `//`) is not the API's answer.
        if request.path.startswith("/api/v1/") and described(request.path) is not None:
            check_answer(request.method, request.path, response)
        return response
