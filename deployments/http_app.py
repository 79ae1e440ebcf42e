"""The Ingress's HTTP surface: the FastAPI app with its error shapes, its middleware (JSON
bodies by default, the access guard), and the web page's and the API docs' routes (they read
nothing of a replica). The API's routes are the Ingress's methods (`ingress.py`), thin wrappers
around its handle API.

(No `from __future__ import annotations` here: FastAPI must resolve the annotations.)
"""


import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from grid_serve import ui
from grid_serve.access import AccessPolicy, Caller
from grid_serve.errors import GridError, NotFoundError, describe_error
from grid_serve.models import non_finite_path
from grid_serve.placement import STRATEGIES

from ._common import logger


class CompletionReport(BaseModel):
    """Body of `/v1/schedule/{task_id}/complete`: how the externally run task went."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ok: bool = True
    duration_s: float | None = Field(None, ge=0)


class Problem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what went wrong, and the field it is about when there is one."""

    error: str
    field: str | None = None
    problems: list[Problem] | None = Field(None, description="every invalid field, for validation errors")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "bad request"), (401, "this route needs the API token (token_env)"),
                         (403, "a foreign Host header, a cross-site browser request, another caller's job, "
                               "reservation or allocation, or critical priority not allowed to this caller"),
                         (404, "no such job, reservation or allocation"),
                         (410, "a finished job's results were dropped (results_bytes_kept)"),
                         (422, "invalid request: the body or a parameter, named in `field`"),
                         (429, "busy, try later: the queue or the waiting requests are at their cap, or no node had "
                               "room within wait_s; retry after Retry-After seconds"),
                         (503, "something the app relies on failed (Ray's GCS): nothing was done; retry"))
}


def caller_of(request: Request) -> Caller:
    """Who sent this HTTP request, as the replica's access policy sees it."""
    return AccessGuard.policy.caller(request.headers)


class FiniteJSONResponse(JSONResponse):
    """JSON that a task's NaN or infinity cannot turn into a 500: strict JSON has no such
    numbers, so they go out as null (the common case pays one failed attempt only when they occur)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            if non_finite_path(content) is None:
                raise
            return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


fastapi_app = FastAPI(
    title="grid-serve",
    version="0.1.0",
    description=f"Task placement for Ray: {', '.join(STRATEGIES)} (GET /v1/strategies says what each does).",
    default_response_class=FiniteJSONResponse,
    responses=ERROR_RESPONSES,
    docs_url=None,  # the Ingress's /docs routes serve them from the package (FastAPI's load scripts from a CDN)
    redoc_url=None,
)


class JsonBodiesByDefault:
    """Treat request bodies as JSON unless they say otherwise: `curl -d '{...}'` sends them as
    form data, and our API takes JSON only, so that is what the user meant."""

    FORM = b"application/x-www-form-urlencoded"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if not content_type or content_type.startswith(self.FORM):
                content_type = b"application/json"
            scope = {**scope, "headers": [*headers, (b"content-type", content_type)]}
        await self.app(scope, receive, send)


fastapi_app.add_middleware(JsonBodiesByDefault)


class AccessGuard:
    """Refuses foreign hosts, cross-site browser requests and missing tokens (grid_serve.access)
    before any route runs. The policy is the replica's own: its Ingress sets `policy` at start."""

    policy = AccessPolicy()

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            query = dict(QueryParams(scope.get("query_string", b"")))  # as the routes read it: the last value wins
            refusal = AccessGuard.policy.refusal(scope["method"], scope["path"], query, headers,
                                                 scope.get("root_path", ""))
            if refusal is not None:
                extra = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
                response = JSONResponse({"error": refusal.message, "field": refusal.field}, status_code=refusal.status,
                                        headers=extra)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


fastapi_app.add_middleware(AccessGuard)  # added last: runs first


@fastapi_app.exception_handler(GridError)
async def _grid_error(request: Request, exc: GridError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry_after)} if exc.status == 429 and retry_after else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [dict(zip(("field", "message"), describe_error(err))) for err in exc.errors()]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse({"error": f"invalid request: {summary}", "field": problems[0]["field"] if problems else None,
                         "problems": problems}, status_code=422)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals in our shape: a body it cannot parse (one nested past what Python's
    JSON parser takes) is 400 on `body`; an unknown route is 404."""
    body: dict[str, Any] = {"error": str(exc.detail)}
    if exc.status_code == 400:
        body["field"] = "body"
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


@fastapi_app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def docs_response(page: HTMLResponse) -> HTMLResponse:
    """An API docs page, held by the browser to this app's own files and routes."""
    page.headers["Content-Security-Policy"] = ui.DOCS_CONTENT_SECURITY_POLICY
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def asset_response(name: str) -> Response:
    """A file of the page, or 404. `no-cache`: a browser revalidates, so an upgraded app never
    runs yesterday's script against today's API."""
    try:
        found = ui.asset(name)
    except KeyError:
        raise NotFoundError(f"no page file {name!r}", field="name") from None
    return Response(found.body, media_type=found.media_type,
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": ui.CONTENT_SECURITY_POLICY})


# ---------------------------------------------------------------------- the web page and the API docs, offline
# (routes of the app itself, not the Ingress's methods: they read nothing of a replica)

@fastapi_app.get("/", include_in_schema=False)
async def http_root(request: Request) -> RedirectResponse:
    """`/` is the page: people open the bare address in a browser."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=307)


@fastapi_app.get("/ui", include_in_schema=False)
async def http_ui() -> Response:
    return asset_response("index.html")


@fastapi_app.get("/ui/{name}", include_in_schema=False)
async def http_ui_asset(name: str) -> Response:
    return asset_response(name)


@fastapi_app.get("/docs", include_in_schema=False)
async def http_docs(request: Request) -> HTMLResponse:
    """Swagger UI from the package's files: clusters often have no internet."""
    root = request.scope.get("root_path", "")
    return docs_response(get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json", title="grid-serve API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css", swagger_favicon_url=f"{root}/ui/icon.svg",
        swagger_ui_parameters={"validatorUrl": None}))  # its default sends the document to a public validator


@fastapi_app.get("/redoc", include_in_schema=False)
async def http_redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return docs_response(get_redoc_html(
        openapi_url=f"{root}/openapi.json", title="grid-serve API",
        redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/ui/icon.svg", with_google_fonts=False))


@fastapi_app.get("/docs/assets/{name}", include_in_schema=False)
async def http_docs_asset(name: str) -> Response:
    try:
        found = ui.docs_asset(name)
    except KeyError:
        raise NotFoundError(f"no docs file {name!r}", field="name") from None
    return Response(found.body, media_type=found.media_type,
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
