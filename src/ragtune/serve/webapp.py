"""The web app: static files (HTML, CSS, ES modules; no build step, no CDN) served by
``ragtune serve``. ``/`` is the app's page, its assets are under ``/static``; the app is a
client of the ``/v1`` API and needs nothing else from the server."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent / "web"

# The page loads only its own scripts and styles and talks only to this server.
SECURITY_HEADERS = {
    # frame-src blob: the Compare page shows a comparison's report (fetched with the key) in a
    # frame; the frame inherits this policy, so its styles come from /static/report.css.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-src blob:; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount_web(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=SECURITY_HEADERS)

    @app.get("/static/report.css", include_in_schema=False)
    def report_css() -> Response:
        """The comparison report's own CSS (inline in the report file), as a stylesheet."""
        from ragtune.evaluate.report import CSS

        return Response(CSS, media_type="text/css", headers=SECURITY_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="web")
