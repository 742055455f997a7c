"""`lethe`: one command line for operators, app developers and compliance officers.

Each command lives beside the code it drives, as a Typer app in the module named in COMMANDS; the root
imports a module only when its command runs, so `lethe --help` is quick and lists every command on every
install. The modules of `serve`, `worker`, `migrate`, `keys`, `certificate` and the HTTP client commands
import nothing of the ML stack: they run on the API image (the project's base dependencies). `unlearn` and
`verify` need the `worker` extra; without it they say so.

Adding a flag to a command is adding a parameter to its function in its own module.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Entry:
    module: str
    attribute: str  # a typer.Typer in that module
    summary: str  # the line of `lethe --help`
    needs_worker_extra: bool = False


COMMANDS: dict[str, Entry] = {
    "serve": Entry("workers.process_cli", "serve", "run the API (uvicorn, no access log)"),
    "worker": Entry("workers.process_cli", "worker", "run a Celery worker (GPU and default queues)"),
    "migrate": Entry("workers.process_cli", "migrate", "bring the database schema up to date (Alembic)"),
    "keys": Entry("app.security.cli", "cli", "create, list and revoke API keys"),
    "certificate": Entry("app.certificates.cli", "cli", "check deletion certificates; the signing key"),
    "requests": Entry(
        "workers.client_cli", "requests", "deletion requests over HTTP: create, get, list, wait"
    ),
    "models": Entry("workers.client_cli", "models", "registered models over HTTP"),
    "unlearn": Entry(
        "workers.unlearning.cli", "cli", "run an unlearning method on a reference workload", True
    ),
    "verify": Entry(
        "workers.verification.cli", "cli", "unlearn on a reference workload and run the gate", True
    ),
}
EXIT_UNAVAILABLE = 3
PROJECT_PACKAGES = ("app", "workers")


def load_command(name: str) -> Any:
    entry = COMMANDS[name]
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not entry.needs_worker_extra or missing in PROJECT_PACKAGES:
            raise  # a command of the base install must import with it alone
        return unavailable_command(name, entry, missing)
    command = typer.main.get_command(getattr(module, entry.attribute))
    command.name = name
    return command


def unavailable_command(name: str, entry: Entry, missing: str) -> TyperCommand:
    def refuse() -> NoReturn:
        typer.echo(
            f"lethe {name} needs the ML packages of the worker extra (no module {missing!r} here): "
            "pip install 'lethe[worker]', or run it on the worker image",
            err=True,
        )
        raise typer.Exit(EXIT_UNAVAILABLE)

    return TyperCommand(
        name,
        callback=refuse,
        help=f"{entry.summary} (needs the worker extra)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


class LetheGroup(TyperGroup):
    """Lists COMMANDS by their summaries; imports a command's module only to run it."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        # For listings only: resolve_command loads the real command.
        return TyperCommand(cmd_name, help=entry.summary, short_help=entry.summary)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name = args[0] if args else ""
        if name in COMMANDS:
            return name, load_command(name), args[1:]
        return super().resolve_command(ctx, args)


def exit_with(result: object, **_: object) -> None:
    """A command answers its exit code (or None for 0)."""
    if isinstance(result, int) and result:
        raise typer.Exit(result)


cli = LetheGroup(
    name="lethe",
    help="Lethe: the right to be forgotten for machine-learning models.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    result_callback=exit_with,
)


def main(argv: list[str] | None = None) -> int:
    """The `lethe` entry point; answers the exit code (tests call it in-process)."""
    try:
        cli.main(args=argv, prog_name="lethe")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
