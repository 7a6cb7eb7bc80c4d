"""How the `gureum` command prints: rich tables for people, JSON for programs, one error format."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gureum.errors import GureumError

P = ParamSpec("P")
R = TypeVar("R")
# Without a terminal rich would wrap at 80 columns, which mangles ids in piped output.
PIPE_WIDTH = 200


def console(stderr: bool = False, soft_wrap: bool = False) -> Console:
    """A console for the current stdout/stderr (test runners swap them per invocation).

    `soft_wrap` leaves long lines whole, for commands meant to be copied and pasted.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, highlight=False, width=width, soft_wrap=soft_wrap)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    """Print `error: <code>: <message>` to stderr and exit."""
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a GureumError escaping `command` into `error: <code>: <message>` and exit 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except GureumError as exc:
            fail(exc.code, exc.message)

    return run


def table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None
) -> None:
    """Print a table; numbers are right-aligned, None shows as '-'."""
    rows = [list(row) for row in rows]
    grid = Table(title=title, title_justify="left", header_style="bold")
    for index, name in enumerate(columns):
        numeric = bool(rows) and all(
            isinstance(row[index], int | float) and not isinstance(row[index], bool) for row in rows
        )
        grid.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        grid.add_row(*(_cell(value) for value in row))
    console().print(grid)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def timestamp(epoch: float | None) -> str | None:
    """Local time, to the second, for tables."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def payload_text(payload: bytes) -> str:
    """A response payload for people: indented if it is JSON, else as text."""
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload.decode(errors="replace")
