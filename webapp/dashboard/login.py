"""Dashboard login: one form taking SUBLEDGER_API_TOKEN, then a signed session cookie.

The cookie is signed with a key derived from the token, so rotating the token
logs everyone out. Without a token nothing is served: every page sends the
visitor to the login page, which says why.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import Flask, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from webapp.dashboard.blueprint import bp
from webapp.services import services

View = TypeVar("View", bound=Callable[..., Any])

SESSION_LIFETIME = timedelta(days=7)
"""How long a login lasts."""


def session_key(token: str) -> bytes:
    """The cookie signing key: an HMAC of the token, never the token itself."""
    return hmac.new(token.encode(), b"subledger dashboard session", hashlib.sha256).digest()


def configure(app: Flask) -> None:
    token = app.extensions["subledger"].settings.api_token
    if token:
        app.config["SECRET_KEY"] = session_key(token)
    app.config.update(
        SESSION_COOKIE_NAME="subledger_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


def _token() -> str | None:
    return services().settings.api_token


def logged_in() -> bool:
    return bool(_token()) and session.get("login") is True


def login_required(view: View) -> View:
    """Send visitors who have not logged in to the login page, then back."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not logged_in():
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("dashboard.overview")


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    expected = _token()
    if not expected:
        return render_template("dashboard/login.html", configured=False), 503
    next_page = request.values.get("next")
    if request.method == "GET":
        if logged_in():
            return redirect(_safe_next(next_page))
        return render_template("dashboard/login.html", configured=True, next_page=next_page)
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        error = "That is not the token (SUBLEDGER_API_TOKEN)."
        return render_template("dashboard/login.html", configured=True, next_page=next_page, error=error), 401
    session.clear()
    session.permanent = True
    session["login"] = True
    return redirect(_safe_next(next_page))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("dashboard.login"))
