"""`lethe requests ...` and `lethe models ...`: a running API's client, for app developers and officers.

They speak HTTP only (the API's URL and a key from --api-url/--api-key or LETHE_API_URL/LETHE_API_KEY),
so they run anywhere the base install does. Exit codes: 0 done, 1 the request failed or was canceled,
2 bad usage, 4 the API was unreachable or refused (its problem+json detail is printed), 5 `wait` gave up.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from app.commands import command_group, stdout_console, table

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 4
EXIT_TIMEOUT = 5
# A request in one of these states changes no more (`failed` may still be retried by an operator).
DONE_STATUSES = frozenset({"completed", "no_data"})
UNSUCCESSFUL_STATUSES = frozenset({"failed", "canceled"})
REQUESTS_PATH = "/v1/deletion-requests"
PAGE_SIZE = 100

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="LETHE_API_URL", help="the API's base URL", show_envvar=True)
]
ApiKey = Annotated[
    str, typer.Option("--api-key", envvar="LETHE_API_KEY", help="an API key of the tenant", show_envvar=True)
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of tables")]
DEFAULT_API_URL = "http://127.0.0.1:8000"

requests = command_group("requests", "Deletion requests (over HTTP).")
models = command_group("models", "Registered models (over HTTP).")
out = stdout_console()


class Client:
    def __init__(self, api_url: str, api_key: str) -> None:
        self.base_url = api_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON; a refusal or an unreachable API ends the command (exit 4)."""
        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise fail(f"cannot reach the API at {self.base_url}: {exc}", EXIT_API) from exc
        if answer.is_error:
            raise fail(describe_problem(answer), EXIT_API)
        return answer.json()

    def pages(self, path: str, params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
        """Items of a paged list, following next_cursor, at most `limit` (None: all)."""
        cursor = None
        served = 0
        while True:
            page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - served)
            query = {**params, "limit": page_size, "cursor": cursor}
            page = self.call("GET", path, params={k: v for k, v in query.items() if v is not None})
            for item in page["items"]:
                yield item
                served += 1
                if limit is not None and served >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return


def describe_problem(answer: httpx.Response) -> str:
    try:
        problem = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}: {answer.text[:300]}"
    if not isinstance(problem, dict):
        return f"HTTP {answer.status_code}: {answer.text[:300]}"
    text = f"HTTP {answer.status_code} {problem.get('title', '')}: {problem.get('detail', '')}".rstrip(": ")
    for error in problem.get("errors") or []:  # validation errors: where (loc) and what (msg)
        if isinstance(error, dict):
            where = ".".join(str(part) for part in error.get("loc") or [])
            text += f"\n  {where}: {error.get('msg') or error}"
    return text


def fail(message: str, code: int) -> typer.Exit:
    """Prints the error; answers the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# ----------------------------------------------------------------------------------------- requests


@requests.command("create")
def create_request(
    api_key: ApiKey,
    subject: Annotated[str | None, typer.Option(help="the data subject's identifier, in clear")] = None,
    sample_ids: Annotated[
        list[int] | None,
        typer.Option("--sample-id", help="a sample id to forget (repeat); instead of --subject"),
    ] = None,
    model_names: Annotated[
        list[str] | None,
        typer.Option("--model", help="only this model (repeat); default every model trained on it"),
    ] = None,
    method: Annotated[
        str, typer.Option(help="unlearning method, or auto (the model's policy decides)")
    ] = "auto",
    regime: Annotated[str, typer.Option(help="gdpr or ccpa (sets the deadline)")] = "gdpr",
    callback_url: Annotated[str | None, typer.Option(help="status changes are POSTed here")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="repeat a create safely with the same key (default: a new one)")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="then wait until it is over, as `requests wait`")
    ] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: seconds before giving up")] = 3600.0,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> int:
    """Send a deletion request for a subject (or samples); prints its id and state."""
    if (subject is None) == (not sample_ids):
        raise fail("give exactly one of --subject and --sample-id", EXIT_USAGE)
    body: dict[str, Any] = {"method": method, "regime": regime}
    body |= {"subject_id": subject} if subject is not None else {"sample_ids": sample_ids}
    if model_names:
        body["models"] = model_names
    if callback_url:
        body["callback_url"] = callback_url
    client = Client(api_url, api_key)
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    created = client.call("POST", REQUESTS_PATH, json=body, headers=headers)
    if as_json:
        print_json(created)
    else:
        show_request(created)
        if created.get("callback_secret"):
            out.print(f"callback secret (shown once, verifies the callbacks): {created['callback_secret']}")
    if wait:
        return follow(client, created["id"], timeout, interval=1.0)
    return 0


@requests.command("get")
def get_request(
    request_id: Annotated[str, typer.Argument(help="the request's id")],
    api_key: ApiKey,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> int:
    """A request's state: deadline, per-model progress, verdict, promoted versions, timeline."""
    request = Client(api_url, api_key).call("GET", f"{REQUESTS_PATH}/{request_id}")
    if as_json:
        print_json(request)
    else:
        show_request(request, timeline=True)
    return 0


@requests.command("list")
def list_requests(
    api_key: ApiKey,
    statuses: Annotated[list[str] | None, typer.Option("--status", help="only this status (repeat)")] = None,
    model: Annotated[str | None, typer.Option(help="only requests affecting this model")] = None,
    overdue: Annotated[
        bool, typer.Option("--overdue", help="only open requests past their deadline")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> int:
    """The tenant's requests, newest first."""
    params: dict[str, Any] = {
        "status": statuses or None,
        "model": model,
        "overdue": True if overdue else None,
    }
    items = list(Client(api_url, api_key).pages(REQUESTS_PATH, params, limit))
    if as_json:
        print_json(items)
        return 0
    if not items:
        out.print("no deletion requests" + (" match" if statuses or model or overdue else ""))
        return 0
    grid = table("id", "status", "regime", "received", "due", "days left")
    for item in items:
        days = f"{item['days_left']} (overdue)" if item["overdue"] else str(item["days_left"])
        grid.add_row(
            item["id"], item["status"], item["regime"], item["received_at"][:16], item["due_at"][:10], days
        )
    out.print(grid)
    return 0


@requests.command("wait")
def wait_for_request(
    request_id: Annotated[str, typer.Argument(help="the request's id")],
    api_key: ApiKey,
    timeout: Annotated[float, typer.Option(help="seconds before giving up (exit 5)")] = 3600.0,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between polls")] = 1.0,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> int:
    """Follow a request until it is over, with live progress per model.

    Exit 0 when completed (or no data was held), 1 when it failed or was canceled, 5 at --timeout.
    """
    return follow(Client(api_url, api_key), request_id, timeout, interval)


def follow(client: Client, request_id: str, timeout: float, interval: float) -> int:
    deadline = time.monotonic() + timeout
    with LiveProgress() if out.is_terminal else ProgressLines() as view:
        while True:
            request = client.call("GET", f"{REQUESTS_PATH}/{request_id}")
            view.show(request)
            if request["status"] in DONE_STATUSES | UNSUCCESSFUL_STATUSES:
                break
            if time.monotonic() >= deadline:
                still = f"request {request_id} is still {request['status']} after {timeout:g} s"
                raise fail(still, EXIT_TIMEOUT)
            time.sleep(interval)
    show_outcome(request)
    return 0 if request["status"] in DONE_STATUSES else EXIT_FAILED


def model_line(model: dict[str, Any]) -> str:
    what = model.get("stage") or model["status"]
    return f"{model['model']}: {what}" + (f" ({model['method']})" if model.get("method") else "")


class LiveProgress:
    """One bar per affected model, redrawn in place (a terminal)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), console=out,
        )  # fmt: skip
        self.status = self.progress.add_task("", total=None)
        self.bars: dict[str, TaskID] = {}

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, request: dict[str, Any]) -> None:
        self.progress.update(self.status, description=f"request {request['id']}: {request['status']}")
        for model in request["models"]:
            if model["model"] not in self.bars:
                self.bars[model["model"]] = self.progress.add_task("", total=100)
            self.progress.update(
                self.bars[model["model"]], description=model_line(model), completed=model.get("progress") or 0
            )


class ProgressLines:
    """A line at each change of status or stage and every 10 % (logs, pipes, CI)."""

    def __init__(self) -> None:
        self.last: tuple[Any, ...] | None = None

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, request: dict[str, Any]) -> None:
        state = (
            request["status"],
            *((m.get("stage"), (m.get("progress") or 0) // 10) for m in request["models"]),
        )
        if state == self.last:
            return
        self.last = state
        models = "; ".join(f"{model_line(m)} {m.get('progress') or 0}%" for m in request["models"])
        print(f"{request['status']}" + (f"  {models}" if models else ""), flush=True)


def show_outcome(request: dict[str, Any]) -> None:
    status = request["status"]
    if status == "completed":
        versions = ", ".join(f"{name} v{version}" for name, version in request["promoted_versions"].items())
        out.print(f"completed: verdict {request.get('verdict') or 'none'}; serving now {versions or '-'}")
        if request.get("certificate_url"):
            out.print(f"certificate: GET {request['certificate_url']}")
    elif status == "no_data":
        out.print("no data held for this subject: nothing to forget")
    else:
        typer.echo(f"{status}: {request.get('failure_reason') or 'no reason given'}", err=True)


def show_request(request: dict[str, Any], timeline: bool = False) -> None:
    late = " (overdue)" if request.get("overdue") else ""
    out.print(
        f"request {request['id']}: {request['status']} ({request['regime']}, method {request['method']})"
    )
    out.print(
        f"received {request['received_at']}, due {request['due_at']}: {request['days_left']} days left{late}"
    )
    if "sample_count" in request:
        out.print(f"samples: {request['sample_count']}")
    if request.get("models"):
        grid = table("model", "status", "stage", "progress", "method", "verdict", "version")
        for model in request["models"]:
            versions = f"{model.get('from_version') or '-'} -> {model.get('to_version') or '-'}"
            progress = f"{model['progress']}%" if model.get("progress") is not None else ""
            grid.add_row(
                model["model"], model["status"], model.get("stage") or "", progress,
                model.get("method") or "", model.get("verdict") or "", versions,
            )  # fmt: skip
        out.print(grid)
    if request.get("failure_reason"):
        out.print(f"failure: {request['failure_reason']}")
    if request.get("certificate_url"):
        out.print(f"certificate: GET {request['certificate_url']}")
    if timeline and request.get("timeline"):
        grid = table("at", "from", "to")
        for change in request["timeline"]:
            grid.add_row(change["at"][:19], change.get("from_status") or "", change["to_status"])
        out.print(grid)


# ----------------------------------------------------------------------------------------- models


@models.command("list")
def list_models(
    api_key: ApiKey,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> int:
    """The tenant's models with their aliases (which version each serves)."""
    client = Client(api_url, api_key)
    items = list(client.pages("/v1/models", {}, None))
    for item in items:
        aliases = client.pages(f"/v1/models/{item['name']}/aliases", {}, None)
        item["aliases"] = {alias["name"]: alias["version"] for alias in aliases}
    if as_json:
        print_json(items)
        return 0
    if not items:
        out.print("no models registered")
        return 0
    grid = table("name", "task", "aliases", "created")
    for item in items:
        aliases = ", ".join(f"{name} -> v{version}" for name, version in item["aliases"].items())
        grid.add_row(item["name"], item["task"], aliases, item["created_at"][:16])
    out.print(grid)
    return 0
