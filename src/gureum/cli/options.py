"""What the `gureum` commands share: option types, the client, argument parsing."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gureum.client import Client

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")
]
FunctionName = Annotated[
    str, typer.Argument(metavar="NAME", help="Function name.", show_default=False)
]


def connect() -> Client:
    """A client configured from the environment (see `gureum --help`)."""
    return Client.from_environment(os.environ)


def split_qualifier(target: str) -> tuple[str, str | None]:
    """Split NAME[:QUALIFIER]; a usage error if the colon has nothing after it."""
    name, sep, qualifier = target.partition(":")
    if sep and not qualifier:
        raise typer.BadParameter(f"{target!r}: nothing after ':'", param_hint="NAME[:QUALIFIER]")
    return name, qualifier or None


def parse_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """Parse repeated K=V option values."""
    result: dict[str, str] = {}
    for value in values or []:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        result[key] = item
    return result
