"""The web console at ``/ui``: a page, its script and its styles, served as files (no
inline script, so the Content-Security-Policy can forbid every other source).

The page reads and acts through the same ``/v1`` API as everyone else, with the token the
user gave once (``/ui?token=…``, then kept in the tab's sessionStorage and taken out of
the address bar).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from hodei.api.state import error

ASSETS = {
    "console.js": "application/javascript",
    "console.css": "text/css",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    # The first address may carry ?token=: it must never leave in a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _read(name: str) -> bytes:
    return (resources.files("hodei.api") / "console" / name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """GET /ui: the web console (workers, queue, functions, invocations with their logs
    and result; cancel, replay and drain for tokens that may)."""
    return web.Response(
        body=_read("index.html"),
        content_type="text/html",
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


async def asset(request: web.Request) -> web.Response:
    """GET /ui/{asset}: the console's script and styles."""
    name = request.match_info["asset"]
    if name not in ASSETS:
        return error(404, "not_found", f"the console has no file {name!r}")
    return web.Response(
        body=_read(name), content_type=ASSETS[name], charset="utf-8", headers=SECURITY_HEADERS
    )
