"""The browser page: ``GET /`` and its static files, served from the package's ``web/`` directory.

Plain HTML and ES modules, no build step: the page captures the microphone with an AudioWorklet and
streams 16-bit PCM to ``/v1/stream`` on the same origin (README: Browser page)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter()

# Every file the page may load, with its type. A fixed table, not a directory listing: a request names a
# key here or gets 404, so no path from a client ever reaches the file system.
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Browsers revalidate on every load (cheap on loopback or a LAN), so an upgraded agent never pairs a new
# page with an old cached script.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _read(name: str) -> bytes:
    return files("edge_agent.server").joinpath("web", name).read_bytes()


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    """One of the page's scripts or its style sheet."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="not found")
    return Response(_read(name), media_type=media_type, headers=_HEADERS)
