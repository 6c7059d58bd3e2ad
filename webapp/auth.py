"""Bearer-token access to the API: `Authorization: Bearer $SUBLEDGER_API_TOKEN`."""

from __future__ import annotations

import hmac

from flask import jsonify, request
from flask.typing import ResponseReturnValue

from webapp.services import services

NOT_CONFIGURED = "SUBLEDGER_API_TOKEN is not configured"


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so the answer time says nothing about the token."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_api_token() -> ResponseReturnValue | None:
    """A blueprint's `before_request`: None lets the request through, else the refusal.

    503 when no token is configured (the server is not ready to serve the API,
    not the client's fault), 401 with `WWW-Authenticate: Bearer` otherwise.
    """
    expected = services().settings.api_token
    if not expected:
        return jsonify(error=NOT_CONFIGURED), 503
    given = _bearer_token()
    if token_matches(given, expected):
        return None
    challenge = 'Bearer realm="subledger"' + ("" if given is None else ', error="invalid_token"')
    response = jsonify(error="missing or wrong bearer token: send Authorization: Bearer $SUBLEDGER_API_TOKEN")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = challenge
    return response
