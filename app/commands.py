"""What every `lethe` command group shares (the root is workers/cli.py): how apps are made, how output
looks."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

# Off a terminal (a pipe, a log, CI) rich would lay tables out in 80 columns: wide enough for our rows.
PIPE_WIDTH = 240


def command_app(**settings: Any) -> typer.Typer:
    """A Typer app for one command or group: docstrings read as Markdown (paragraphs are rewrapped), and
    shell completion is offered once, by the root, not by every group."""
    return typer.Typer(add_completion=False, rich_markup_mode="markdown", **settings)


def command_group(name: str, help: str) -> typer.Typer:
    """A group of commands (`lethe keys ...`), a group even while it holds a single command."""
    group = command_app(name=name, help=help, no_args_is_help=True)
    group.callback()(lambda: None)
    return group


def stdout_console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def table(*headers: str) -> Table:
    """Cells wrap rather than end in an ellipsis: ids stay whole, to be copied."""
    grid = Table()
    for header in headers:
        grid.add_column(header, overflow="fold")
    return grid
