"""`gureum` commands that watch and tune running functions: logs, records, events, scaling,
and the server's own state."""

from __future__ import annotations

import json
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer
from rich.text import Text

from gureum.cli import render
from gureum.cli.options import FunctionName, JsonOutput, connect
from gureum.cli.render import print_json, reports_errors, table

FOLLOW_INTERVAL_S = 0.5


class EventState(StrEnum):
    pending = "pending"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"


# ---- observing --------------------------------------------------------------------------------


@reports_errors
def logs(
    name: FunctionName,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new logs until Ctrl-C.")
    ] = False,
    request_id: Annotated[
        str | None, typer.Option(help="Only the invocation with this request id.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many invocations.")] = 20,
    json_output: JsonOutput = False,
) -> None:
    """Print the logs of recent invocations (with --json and --follow: one JSON per line)."""
    with connect() as client:
        client.get_function(name)  # a typo should fail, not follow nothing forever
        entries = client.logs(name, request_id=request_id, limit=limit)
        if not follow:
            if json_output:
                print_json(entries)
            else:
                for entry in entries:
                    typer.echo(entry["log"], nl=False)
            return
        # Ctrl-C (or SIGTERM) ends the loop between polls: an interrupt raised inside an HTTP
        # call could land in library cleanup code and be lost there.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        cursor = 0
        while True:
            for entry in entries:
                if json_output:
                    typer.echo(json.dumps(entry, ensure_ascii=False))
                else:
                    typer.echo(entry["log"], nl=False)
                cursor = max(cursor, entry["seq"])
            if stop.wait(FOLLOW_INTERVAL_S):
                return
            entries = client.logs(name, after=cursor, request_id=request_id, limit=1000)


@reports_errors
def invocations(
    name: FunctionName,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    json_output: JsonOutput = False,
) -> None:
    """Show a function's recent invocation records (metering and timing)."""
    with connect() as client:
        records = client.invocations(name, limit)
    if json_output:
        print_json(records)
        return
    table(
        [
            "request id",
            "version",
            "trigger",
            "status",
            "cold",
            "init ms",
            "run ms",
            "billed ms",
            "max mem MB",
        ],
        (
            [
                r["request_id"],
                r["version"],
                r["trigger"],
                r["status"] + (f" ({r['error_type']})" if r.get("error_type") else ""),
                r["cold"],
                float(r["init_ms"]),
                float(r["run_ms"]),
                r["billed_ms"],
                r["max_memory_mb"],
            ]
            for r in records
        ),
    )


@reports_errors
def events(
    state: Annotated[EventState | None, typer.Option(help="Only events in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
    json_output: JsonOutput = False,
) -> None:
    """Show async (Event) invocations and their delivery state."""
    with connect() as client:
        found = client.events(state.value if state else None, limit)
    if json_output:
        print_json(found)
        return
    table(
        ["request id", "function", "state", "attempts", "created", "last error"],
        (
            [
                e["request_id"],
                e["function_name"] + (f":{e['qualifier']}" if e.get("qualifier") else ""),
                e["state"],
                f"{e['attempts']}/{e['max_attempts']}",
                render.timestamp(e["created_at"]),
                e.get("last_error"),
            ]
            for e in found
        ),
    )


@reports_errors
def redrive(
    request_id: Annotated[
        str | None, typer.Argument(help="One dead-lettered event; omit for all of them.")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Send dead-lettered (failed) async events through again."""
    with connect() as client:
        count = client.redrive(request_id)
    if json_output:
        print_json({"redriven": count})
        return
    render.console().print(Text(f"redriven: {count}"))


@reports_errors
def scale(
    name: FunctionName,
    min_instances: Annotated[
        int | None, typer.Option(min=0, max=1000, help="Instances kept warm.")
    ] = None,
    reserved: Annotated[
        int | None, typer.Option(min=0, help="Reserved (maximum) concurrency.")
    ] = None,
    unreserved: Annotated[
        bool, typer.Option("--unreserved", help="Remove the reserved concurrency.")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Set a function's warm instances and concurrency limit; without options, show them."""
    if reserved is not None and unreserved:
        raise typer.BadParameter("give --reserved or --unreserved, not both")
    with connect() as client:
        result = client.set_scaling(
            name,
            min_instances=min_instances,
            reserved_concurrency=reserved,
            clear_reserved_concurrency=unreserved,
        )
    if json_output:
        print_json(result)
        return
    limit = result.get("reserved_concurrency")
    render.console().print(
        Text(
            f"{name}: min instances {result.get('min_instances')}, reserved concurrency "
            + ("none" if limit is None else str(limit))
        )
    )


@reports_errors
def doctor(json_output: JsonOutput = False) -> None:
    """Show the server's isolation level and each sandbox check."""
    with connect() as client:
        report = client.doctor()
    if json_output:
        print_json(report)
        return
    out = render.console()
    level = report.get("isolation", "unknown")
    out.print(
        Text.assemble(
            "isolation: ",
            (level, "bold green" if level == "full" else "bold yellow"),
            f" (sandbox: {report.get('sandbox')})",
        )
    )
    for check in report.get("checks", []):
        mark = Text("✓", style="green") if check.get("ok") else Text("✗", style="red")
        detail = f"  {check['detail']}" if check.get("detail") else ""
        out.print(Text.assemble("  ", mark, f" {check.get('name')}{detail}"))
    for key in ("endpoint", "region", "data_dir", "database", "instances"):
        if key in report:
            out.print(Text(f"{key.replace('_', ' ')}: {report[key]}"))


@reports_errors
def whoami(json_output: JsonOutput = False) -> None:
    """Show which principal your credentials authenticate as."""
    with connect() as client:
        identity = client.whoami()
        endpoint = client.endpoint
    if json_output:
        print_json({**identity, "endpoint": endpoint})
        return
    out = render.console()
    for key in ("account_id", "principal", "access_key_id"):
        out.print(Text(f"{key.replace('_', ' ')}: {identity.get(key)}"))
    out.print(Text(f"endpoint: {endpoint}"))
