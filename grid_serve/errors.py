"""Errors users can cause, each with the HTTP status and the field it is about.

The HTTP layer turns them into `{"error": ..., "field": ...}` with `status`; the CLI prints
the message on one line; handle callers get the exception itself.
"""

from __future__ import annotations


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


class NoCapacityError(GridError):
    """Nothing could take the request within the time the caller allowed; retrying may help."""

    status = 503


def describe_error(error: dict) -> tuple[str, str]:
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
