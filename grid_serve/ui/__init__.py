"""The web page at `/ui`: static files shipped inside the package, read once per process.

Everything the page needs is here (no CDN, no web font: clusters often have no internet), and
the page itself only calls the `/v1` routes, like any other client. The Ingress serves these
bytes; it never renders anything per request.

    >>> asset("index.html").media_type
    'text/html; charset=utf-8'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSETS = ("index.html", "ui.css", "ui.js", "icon.svg")
# The browser enforces what the page promises: it loads and calls nothing but this app.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


@cache
def asset(name: str) -> Asset:
    """The file `name` of the page. Only the listed names: a request path never reaches the
    file system as given, so `../` can never read anything else."""
    if name not in ASSETS:
        raise KeyError(name)
    body = resources.files(__package__).joinpath(name).read_bytes()
    return Asset(body, MEDIA_TYPES[name[name.rindex("."):]])


# The interactive API docs (/docs: Swagger UI, /redoc: ReDoc) run their scripts in the app's own
# origin, so they come from a package too (fastapi-offline ships both), never from a CDN, and the
# browser is told to load and call nothing else. Their pages start them with an inline script.
DOCS_ASSETS = {"swagger-ui-bundle.js": ".js", "swagger-ui.css": ".css", "redoc.standalone.js": ".js"}
DOCS_CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                                "connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; frame-ancestors 'none'; "
                                "form-action 'self'")


@cache
def docs_asset(name: str) -> Asset:
    """A script or style sheet of the API docs pages, from the installed package (listed names only)."""
    if name not in DOCS_ASSETS:
        raise KeyError(name)
    body = resources.files("fastapi_offline").joinpath("static", name).read_bytes()
    return Asset(body, MEDIA_TYPES[DOCS_ASSETS[name]])

