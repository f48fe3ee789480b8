"""The cockpit's pages, served by the API's own server: no separate build to run them.

The pages are plain HTML, CSS and ES modules in ``server/web``; three.js comes from the npm registry
(``npm ci`` in ``server/web``, which ``make setup`` runs) and is served from its ``node_modules``
through an import map, never copied into the tree.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["WEB_DIR", "mount_cockpit"]

log = logging.getLogger("tamc.server.cockpit")

WEB_DIR = Path(__file__).parent / "web"


def mount_cockpit(app: FastAPI, web_dir: Path | None = None) -> None:
    web = web_dir or WEB_DIR
    three = web / "node_modules" / "three"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=web / "static"), name="static")
    if (three / "build").is_dir():
        app.mount("/vendor/three/addons", StaticFiles(directory=three / "examples" / "jsm"), name="three-addons")
        app.mount("/vendor/three", StaticFiles(directory=three / "build"), name="three")
    else:
        log.warning("three.js is not installed in %s: the cockpit shows no 3D view; run `make setup` (npm ci)", web)

        @app.get("/vendor/three/{path:path}", include_in_schema=False)
        def missing(path: str) -> JSONResponse:
            return JSONResponse({"error": "NotInstalled", "detail": f"three.js is not installed in {web}: run `make setup` (npm ci)"},
                                status_code=404)
