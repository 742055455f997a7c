"""The OpenAPI document as the service behaves, and the documentation pages, served without a CDN.

FastAPI documents the success answers; the error answers come from what every operation shares, in one
place here rather than on each route: any operation may answer 422 (the input rule, app.inputs) and
500; one with an API key 401, 403 and 503 (the key is looked up in the database); a /v1 operation 429
(the rate limit); one with a path parameter 404; one with a body 400 (unparseable) and 413; one that
takes an Idempotency-Key 400 and 409. Routes add what only they answer with `problem_responses`.
Every error answer is `application/problem+json` with the Problem schema (app.errors.ProblemDetails),
FastAPI's own HTTPValidationError, which the service never sends, is gone.

Create answers link to the operation that reads what they created, naming the parameter it takes: a
dataset or model is read by its name, a version by its number, the rest by their ids.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from app.errors import PROBLEM_CONTENT_TYPE, ProblemDetails
from app.idempotency.service import IDEMPOTENCY_HEADER

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
FASTAPI_422_DESCRIPTION = "Validation Error"  # what FastAPI says of the HTTPValidationError it assumes
DOCS_STATIC_PATH = "/docs/static"

ERROR_DESCRIPTIONS = {
    400: "The body is not parseable, or a header is malformed (Idempotency-Key).",
    401: "No API key, or an invalid or revoked one.",
    403: "The API key lacks the scope this operation needs.",
    404: "No such object for this tenant (another tenant's objects are not disclosed).",
    409: "Conflicts with the current state, or a request with this Idempotency-Key is still in flight.",
    410: "Gone: the object existed and was removed.",
    413: "The body exceeds the size limit.",
    415: "The body's media type is not one this operation reads.",
    422: "The request breaks the schema or the input rule (control characters, non-finite numbers, "
    "integers out of range), or names objects that do not fit together.",
    429: "Rate limited: retry after Retry-After seconds.",
    500: "An unexpected error (logged with the request id).",
    503: "The database is unavailable: retry after Retry-After seconds.",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
# Descriptions of path parameters by name: what each names, and what it does not.
PATH_PARAMETERS = {
    "dataset": "The dataset's `name` (as created; not its `id`).",
    "model": "The model's `name` (as created; not its `id`).",
    "version": "The version's number (`version`: 1, 2, ...; not its `id`).",
    "alias": "The alias's name, e.g. production.",
    "request_id": "The deletion request's `id`.",
    "job_id": "The job's `id`.",
    "webhook_id": "The subscription's `id`.",
    "subject_id": "The data subject's identifier in clear, as registered with its samples.",
    "plot": "A plot the report lists, without `.png`.",
}
# (create operation, its success status, the operation that reads the result, parameter -> where in the
# create answer its value is)
CREATE_LINKS = (
    ("create_dataset", "201", "get_dataset", {"dataset": "$response.body#/name"}),
    ("create_model", "201", "get_model", {"model": "$response.body#/name"}),
    (
        "register_version",
        "201",
        "get_version",
        {"model": "$response.body#/model", "version": "$response.body#/version"},
    ),
    ("train_version", "202", "get_job", {"job_id": "$response.body#/id"}),
    ("create_webhook", "201", "get_webhook", {"webhook_id": "$response.body#/id"}),
    ("create_deletion_request", "202", "get_deletion_request", {"request_id": "$response.body#/id"}),
)


def problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or ERROR_DESCRIPTIONS.get(status, "An error."),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route for the errors only it answers: problem_responses(409, 415) (descriptions
    by status as `e409="..."`)."""
    return {status: problem_response(status, descriptions.get(f"e{status}")) for status in statuses}


def operation_id(route: APIRoute) -> str:
    """Operation ids are the endpoints' function names (create_dataset, get_dataset, ...)."""
    return route.name


def shared_error_statuses(path: str, operation: dict[str, Any]) -> set[int]:
    statuses = {422, 500}
    parameters = operation.get("parameters", [])
    if operation.get("security"):
        statuses |= {401, 403, 503}
    if path.startswith("/v1/"):
        statuses.add(429)
    if any(parameter["in"] == "path" for parameter in parameters):
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413}
    if any(
        parameter["in"] == "header" and parameter["name"] == IDEMPOTENCY_HEADER for parameter in parameters
    ):
        statuses |= {400, 409}
    return statuses


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document /openapi.json serves (built once)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    operations = {}
    for path, item in document["paths"].items():
        for operation in item.values():
            operations[operation["operationId"]] = operation
            _document_errors(path, operation)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in PATH_PARAMETERS:
                    parameter.setdefault("description", PATH_PARAMETERS[parameter["name"]])
    for create, status, read, parameters in CREATE_LINKS:
        if create in operations and read in operations:
            links = operations[create]["responses"][status].setdefault("links", {})
            links[read] = {"operationId": read, "parameters": parameters}
    app.openapi_schema = document
    return document


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    declared = {int(status) for status in responses if status.isdigit() and int(status) >= 400}
    for status in sorted(declared | shared_error_statuses(path, operation)):
        description = responses.get(str(status), {}).get("description")
        if status == 422 and description == FASTAPI_422_DESCRIPTION:
            description = None
        responses[str(status)] = problem_response(status, description)


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, from assets served by the API itself (the
    fastapi-offline package carries them), so the pages work without internet access."""
    app.mount(
        DOCS_STATIC_PATH, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-static"
    )

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{DOCS_STATIC_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
