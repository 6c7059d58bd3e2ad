"""Plotly's JavaScript, served from the installed `plotly` Python package.

No CDN at run time and no third-party code in the repository: the file is the
one pip installed, so the dashboard works offline and upgrades with the package.
"""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from flask import abort, send_file
from flask.typing import ResponseReturnValue

from webapp.dashboard.blueprint import bp

PLOTLY_JS = Path(str(files("plotly").joinpath("package_data", "plotly.min.js")))
"""plotly.min.js as shipped inside the plotly package."""

PLOTLY_VERSION = version("plotly")
"""Part of the script's URL, so a new version is fetched while the old one may be cached for a year."""

CACHE_SECONDS = 365 * 24 * 3600


@bp.get("/static/vendor/plotly.min.js")
def plotly_js() -> ResponseReturnValue:
    if not PLOTLY_JS.is_file():
        abort(404, description="plotly.min.js is not installed (pip install plotly)")
    return send_file(PLOTLY_JS, mimetype="text/javascript", max_age=CACHE_SECONDS, conditional=True)


@bp.context_processor
def _plotly_version() -> dict[str, str]:
    return {"plotly_version": PLOTLY_VERSION}
