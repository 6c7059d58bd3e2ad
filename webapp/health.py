"""`GET /healthz`: 200 when the database and Redis answer, 503 naming what does not."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue
from redis import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webapp.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    found = services()
    checks: dict[str, str] = {}
    try:
        with found.database.session() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"unavailable ({type(exc).__name__})"
    if found.redis is None:
        checks["redis"] = "not configured (REDIS_URL is not set)"
    else:
        try:
            found.redis.ping()
            checks["redis"] = "ok"
        except RedisError as exc:
            checks["redis"] = f"unavailable ({type(exc).__name__})"
    healthy = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
