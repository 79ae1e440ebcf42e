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
