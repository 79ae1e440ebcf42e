"""Who may reach the HTTP API, and what needs the token. Pure: the Ingress asks `refusal()`.

Three rules, checked on every request before any route runs:
  - the `Host` header names a host this app serves (loopback names by default; more through
    `allowed_hosts` in serve_config): a page that rebinds its own DNS name to 127.0.0.1
    reaches us with its name in `Host` and is refused;
  - a browser's cross-site request is refused: an `Origin` other than this app's own, or
    `Sec-Fetch-Site: cross-site`/`same-site`. curl and the CLI send neither and pass; our own
    page at /ui is same-origin;
  - with a token configured, what starts, cancels or releases work, or reads results, needs
    `Authorization: Bearer <token>` (401 otherwise). Status reads stay open. The check reads
    what the routes read: the path less the mount prefix (`route_path`), `?results=` with
    FastAPI's own bool parser (`query_flag_off`).
Handle calls never come through here: they run inside the cluster under Ray's trust model.

Ownership (`Caller`): a job, a `/v1/schedule` reservation or a sharing allocation made over
HTTP can be cancelled, completed or released only by whoever made it: the same token identity
when tokens are configured (`token_env` holding `name=token,name=token`, or one bare token),
else the holder of the owner key returned when it was made (`owner_key` in the answer, sent
back in the `X-Grid-Owner-Key` header). With tokens, reading a job's results is its maker's too
(`results_reader`). What a handle call made belongs to the cluster: only handle calls touch it.
`critical_callers` limits `critical` priority to named identities.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

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
# FastAPI reads a `bool` query parameter with pydantic's lax bool; the check below uses the same
# adapter, so no word can read as true for the route and as false for the token check
_QUERY_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    field: str = "headers"


OWNER_KEY_HEADER = "x-grid-owner-key"
CLUSTER_OWNER = "cluster"  # made by a handle call inside the cluster
SINGLE_TOKEN_IDENTITY = "token"  # who holds the one token, when token_env holds a bare token


@dataclass(frozen=True)
class Caller:
    """Who sent an HTTP request: the identity of its token, and the owner key it showed."""

    identity: str | None = None
    key: str | None = None

    def claim(self) -> tuple[str, str | None]:
        """The owner of what this caller makes now, and the key to hand back (a fresh one
        when the caller has no identity: only its holder may touch what it made)."""
        if self.identity is not None:
            return f"id:{self.identity}", None
        key = secrets.token_urlsafe(18)
        return key_owner(key), key


def schedule_quota_of(owner: str | None) -> str | None:
    """Whose `max_schedule_held` a /v1/schedule reservation made by `owner` counts against: a
    token identity's own; one count shared by every caller without a token (each of their
    requests has an owner key of its own, so the key cannot tell callers apart); none for a
    handle call, trusted inside the cluster.

    >>> schedule_quota_of("id:ana"), schedule_quota_of(key_owner("k")), schedule_quota_of(CLUSTER_OWNER)
    ('id:ana', 'callers without a token', None)
    """
    if owner is None or owner == CLUSTER_OWNER:
        return None
    return owner if owner.startswith("id:") else "callers without a token"


def key_owner(key: str) -> str:
    """An owner key as stored: its hash, so no listing or log ever shows a usable key."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]


def may_touch(caller: Caller | None, owner: str | None) -> bool:
    """Whether `caller` may cancel, complete or release what `owner` made. A handle call
    (`caller` None) may touch anything; nothing made over HTTP is the cluster's.

    >>> owner, key = Caller().claim()
    >>> may_touch(Caller(key=key), owner), may_touch(Caller(key="guess"), owner), may_touch(Caller(), owner)
    (True, False, False)
    >>> may_touch(Caller(identity="ana"), "id:ana"), may_touch(Caller(identity="bo"), "id:ana")
    (True, False)
    >>> may_touch(None, CLUSTER_OWNER), may_touch(Caller(identity="ana"), CLUSTER_OWNER)
    (True, False)
    """
    if caller is None or owner is None:
        return True
    if owner.startswith("id:"):
        return caller.identity is not None and hmac.compare_digest(owner, f"id:{caller.identity}")
    if owner.startswith("key:"):
        return caller.key is not None and hmac.compare_digest(owner, key_owner(caller.key))
    return False


def refusal_to_touch(owner: str | None, what: str, action: str = "cancel, complete or release it") -> str:
    """Why a caller may not touch `what` (`action`: what it tried): said the same way for jobs,
    reservations and allocations, and for reading a job's results."""
    if owner == CLUSTER_OWNER:
        return f"{what} was made by a handle call inside the cluster; {action} through the handle"
    if owner is not None and owner.startswith("id:"):
        return f"{what} belongs to {owner[3:]!r}; only that token may {action}"
    return (f"{what} belongs to whoever made it: send its owner_key (returned when it was made) in the "
            "X-Grid-Owner-Key header")


def parse_tokens(value: str | None) -> dict[str, str]:
    """`token_env`'s value: `name=token` pairs separated by commas, or one bare token.

    >>> parse_tokens("ana=s3cret, bo=0ther"), parse_tokens("s3cret"), parse_tokens(None)
    ({'ana': 's3cret', 'bo': '0ther'}, {'token': 's3cret'}, {})
    """
    if not value or not value.strip():
        return {}
    if "=" not in value:
        return {SINGLE_TOKEN_IDENTITY: value.strip()}
    tokens: dict[str, str] = {}
    for pair in value.split(","):
        name, _, token = pair.strip().partition("=")
        if not name.strip() or not token.strip():
            raise ValueError("token_env must hold `name=token` pairs separated by commas, or one bare token")
        tokens[name.strip()] = token.strip()
    return tokens


@dataclass(frozen=True)
class AccessPolicy:
    tokens: Mapping[str, str] = field(default_factory=dict)  # identity -> token
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    critical_callers: tuple[str, ...] | None = None  # identities that may use `critical`; None: anyone


    def refusal(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                root_path: str = "") -> Refusal | None:
        """Why this request may not go on, or None. `headers` keys are lower-case; `root_path` is
        the route prefix the app is mounted under (ASGI's `root_path`, which Serve sets)."""
        host = headers.get("host", "")
        if not self._serves(host_name(host)):
            return Refusal(403, f"host {host!r} is not served here; this app answers "
                                f"{', '.join(self.allowed_hosts)} (allowed_hosts in serve_config)")
        cross_site = _cross_site(headers, host)
        if cross_site:
            return Refusal(403, f"cross-site request refused ({cross_site}): the API takes requests from "
                                "its own page, curl, the CLI and clients, not from other web pages")
        if self.tokens and needs_token(method, route_path(path, root_path), query) and not self._has_token(headers):
            return Refusal(401, "this route needs `Authorization: Bearer <token>` (the CLI and clients send "
                                "$GRID_TOKEN)", field="authorization")
        return None

    def _serves(self, name: str) -> bool:
        return ANY_HOST in self.allowed_hosts or name in self.allowed_hosts

    def _has_token(self, headers: Mapping[str, str]) -> bool:
        return self.identity_of(headers) is not None

    def identity_of(self, headers: Mapping[str, str]) -> str | None:
        """The identity whose token the request carries, if any (every token is compared)."""
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        found = None
        for identity, token in self.tokens.items():
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                found = identity
        return found

    def caller(self, headers: Mapping[str, str]) -> Caller:
        return Caller(identity=self.identity_of(headers), key=headers.get(OWNER_KEY_HEADER) or None)

    def results_reader(self, caller: Caller) -> Caller | None:
        """Whose ownership reading a job's results must prove: with tokens, the caller's (results
        and the arguments they echo are the maker's, as cancelling is); without, nobody's, since
        every local caller may read status and results alike. None means no check, as for a
        handle call."""
        return caller if self.tokens else None

    def may_use_critical(self, caller: Caller | None) -> bool:
        return caller is None or self.critical_callers is None or caller.identity in self.critical_callers


def host_name(host: str) -> str:
    """The name in a Host header, without its port: '[::1]:8000' -> '::1'.

    >>> host_name("127.0.0.1:8000"), host_name("[::1]:8000"), host_name("localhost")
    ('127.0.0.1', '::1', 'localhost')
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def route_path(path: str, root_path: str) -> str:
    """The path the app's router matches routes against: `path` less the mount prefix, read as
    Starlette reads it (`starlette._utils.get_route_path`), so a prefix that itself holds `/v1/`
    cannot hide a route from the token check.

    >>> route_path("/api/v1/grid/v1/jobs", "/api/v1/grid"), route_path("/v1/jobs", "")
    ('/v1/jobs', '/v1/jobs')
    """
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path):] if path[len(root_path)] == "/" else path


def query_flag_off(value: str | None) -> bool:
    """Whether a boolean query parameter reads as false, as FastAPI reads it (absent is false).
    A word it refuses is not false: the route answers 422, but only after the token check.

    >>> [query_flag_off(word) for word in (None, "0", "off", "n", "t", "Y", "maybe")]
    [True, True, True, True, False, False, False]
    """
    if value is None:
        return True
    try:
        return _QUERY_BOOL.validate_python(value) is False
    except ValidationError:
        return False


def needs_token(method: str, path: str, query: Mapping[str, str]) -> bool:
    """Starts, cancels or releases work, or reads a job's results (`path` as the router sees it)."""
    method = method.upper()
    if any(method == guarded and pattern.fullmatch(path) for guarded, pattern in _GUARDED):
        return True
    return method == "GET" and bool(_JOB_READ.fullmatch(path)) and not query_flag_off(query.get("results"))


def _cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """What marks this request as another site's, when a browser sent it."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower():
        return f"Origin {origin!r} is not this app's own"
    return None
