"""JSON errors for every HTTP error, and never a traceback in a response."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger("subledger.web")


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return jsonify(error=exc.description or exc.name), exc.code or 500


def _unexpected(exc: Exception) -> ResponseReturnValue:
    log.exception("unhandled error")
    return jsonify(error=InternalServerError.description), 500


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
