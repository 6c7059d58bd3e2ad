"""The baseline of bench/webhook_throughput.py: a bare Flask endpoint that
reads the body and answers 200, served by the same gunicorn settings."""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.post("/webhooks/stripe")
def receive() -> ResponseReturnValue:
    request.get_data()
    return jsonify(received=True)
