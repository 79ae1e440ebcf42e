"""Errors users can cause, each with the HTTP status and the field it is about.

The HTTP layer turns them into `{"error": ..., "field": ...}` with `status`; the CLI prints
the message on one line; handle callers get the exception itself.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


class GridError(Exception):
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidRequestError(GridError):
    """The request names something that does not exist or can never fit."""

    status = 422


class NotFoundError(GridError):
    status = 404


class ForbiddenError(GridError):
    """The caller may not touch this: another caller made it, or it asks for what it may not use."""

    status = 403


class TooBusyError(GridError):
    """The app holds as much as it is allowed to (a queue or waiter cap): retry after a while."""

    status = 429

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


class GoneError(GridError):
    """It existed, but was dropped to stay within a limit (a finished job's results)."""

    status = 410


class NoCapacityError(TooBusyError):
    """Nothing could take the request within the time the caller allowed: busy, try later (429
    with Retry-After, as a full queue answers). Nothing failed, so it is no 5xx."""


class UnavailableError(GridError):
    """Something the app relies on failed (Ray's GCS): nothing was done, and retrying may help."""

    status = 503


def first_line(exc: BaseException) -> str:
    """An error's first line ("" when it has no text): what a log line or a task's outcome shows of
    a Ray error, whose later lines are its remote traceback.

    >>> first_line(ValueError("bad\\nmore")), first_line(ValueError())
    ('bad', '')
    """
    text = str(exc)
    return text.splitlines()[0] if text else ""


def error_on_node(exc: BaseException, node_name: str) -> str:
    """A Ray error for a task as its outcome says it: its kind, the node, its first line."""
    return f"{type(exc).__name__} on node {node_name}: {first_line(exc)}"


def plain_seconds(seconds: float) -> str:
    """A duration as people write it, to the hundredth: never `1.16263e-245s`.

    >>> plain_seconds(1.16263e-245), plain_seconds(0.25), plain_seconds(2.5), plain_seconds(30.0)
    ('0 s', '0.25 s', '2.5 s', '30 s')
    """
    text = f"{seconds:.2f}".rstrip("0").rstrip(".")
    return f"{text if text not in ('', '-0') else '0'} s"


def require_number(field: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """`value` if it is a finite number in [low, high] ((low, high] with `low_open`); else the
    InvalidRequestError HTTP's own validation would give. Handle calls skip FastAPI's checks.

    >>> require_number("lease_s", 0, 0, 86400, low_open=True)
    Traceback (most recent call last):
    ...
    grid_serve.errors.InvalidRequestError: lease_s must be a number above 0 and at most 86400, got 0
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise InvalidRequestError(f"{field} must be a number {bound} and at most {high:g}, got {value!r}", field=field)
    return float(value)


def require_id(field: str, value: Any, max_length: int = 200) -> str:
    """`value` if it is a non-empty string of at most `max_length` characters."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidRequestError(f"{field} must be a string of 1 to {max_length} characters", field=field)
    return value


def describe_error(error: Mapping[str, Any]) -> tuple[str, str]:
    """(field, message) for one pydantic/FastAPI validation error, in the words we show users.

    >>> describe_error({"loc": ("body", "resources", "cpu_count"), "msg": "Input should be >= 0", "type": "x"})
    ('resources.cpu_count', 'Input should be >= 0')
    """
    if error.get("type") == "json_invalid":
        return "body", f"malformed JSON ({error.get('ctx', {}).get('error', 'could not parse')})"
    if error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "body", "a JSON body is required"
    parts = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    message = str(error.get("msg", "invalid")).replace("Value error, ", "")
    return ".".join(parts) or "body", message
