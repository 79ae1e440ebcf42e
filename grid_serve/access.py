"""Who may reach the HTTP API, and what needs the token. Pure: the Ingress asks `refusal()`.

Three rules, checked on every request before any route runs:
  - the `Host` header names a host this app serves (loopback names by default; more through
    `allowed_hosts` in serve_config): a page that rebinds its own DNS name to 127.0.0.1
    reaches us with its name in `Host` and is refused;
  - a browser's cross-site request is refused: an `Origin` other than this app's own, or
    `Sec-Fetch-Site: cross-site`/`same-site`. curl and the CLI send neither and pass; our own
    page at /ui is same-origin;
  - with a token configured, what starts, cancels or releases work, or reads results, needs
    `Authorization: Bearer <token>` (401 otherwise). Status reads stay open.
Handle calls never come through here: they run inside the cluster under Ray's trust model.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"
# (method, path under /v1) that start, cancel or release work; reading results is checked apart
_GUARDED = (
    ("POST", re.compile(r"/v1/jobs/?")),
    ("DELETE", re.compile(r"/v1/jobs/[^/]+/?")),
    ("POST", re.compile(r"/v1/schedule/?")),
    ("POST", re.compile(r"/v1/schedule/[^/]+/complete/?")),
    ("POST", re.compile(r"/v1/sharing/?")),
    ("POST", re.compile(r"/v1/sharing/[^/]+/release/?")),
)
_JOB_READ = re.compile(r"/v1/jobs/[^/]+/?")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    field: str = "headers"


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS

    def refusal(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Refusal | None:
        """Why this request may not go on, or None. `headers` keys are lower-case."""
        host = headers.get("host", "")
        if not self._serves(host_name(host)):
            return Refusal(403, f"host {host!r} is not served here; this app answers "
                                f"{', '.join(self.allowed_hosts)} (allowed_hosts in serve_config)")
        cross_site = _cross_site(headers, host)
        if cross_site:
            return Refusal(403, f"cross-site request refused ({cross_site}): the API takes requests from "
                                "its own page, curl, the CLI and clients, not from other web pages")
        if self.token and needs_token(method, api_path(path), query) and not self._has_token(headers):
            return Refusal(401, "this route needs `Authorization: Bearer <token>` (the CLI and clients send "
                                "$GRID_TOKEN)", field="authorization")
        return None

    def _serves(self, name: str) -> bool:
        return ANY_HOST in self.allowed_hosts or name in self.allowed_hosts

    def _has_token(self, headers: Mapping[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), (self.token or "").encode())


def host_name(host: str) -> str:
    """The name in a Host header, without its port: '[::1]:8000' -> '::1'.

    >>> host_name("127.0.0.1:8000"), host_name("[::1]:8000"), host_name("localhost")
    ('127.0.0.1', '::1', 'localhost')
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def api_path(path: str) -> str:
    """The part of a path from `/v1/` on (the app may be mounted under a route prefix)."""
    at = path.find("/v1/")
    return path[at:] if at >= 0 else path


def needs_token(method: str, path: str, query: Mapping[str, str]) -> bool:
    """Starts, cancels or releases work, or reads a job's results."""
    method = method.upper()
    if any(method == guarded and pattern.fullmatch(path) for guarded, pattern in _GUARDED):
        return True
    return method == "GET" and bool(_JOB_READ.fullmatch(path)) and query.get("results", "").lower() in _TRUE


def _cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """What marks this request as another site's, when a browser sent it."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower():
        return f"Origin {origin!r} is not this app's own"
    return None
