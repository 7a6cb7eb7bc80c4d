"""`gureum mapping …`: event source mappings (an SQS queue → a function), through the same
Lambda API (`/2015-03-31/event-source-mappings`) that boto3's `create_event_source_mapping`
uses."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.text import Text

from gureum.cli import render
from gureum.cli.options import JsonOutput, connect
from gureum.cli.render import print_json, reports_errors, table
from gureum.client import Client

ESM = "/2015-03-31/event-source-mappings"

mapping_app = typer.Typer(
    help="Event source mappings: run a function on batches of messages from a queue.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

MappingId = Annotated[
    str, typer.Argument(metavar="UUID", help="The mapping's UUID (see `gureum mapping ls`).")
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, max=10000, help="Most messages per invocation [AWS: 10].")
]
Window = Annotated[
    int | None,
    typer.Option(
        "--window",
        min=0,
        max=300,
        help="Seconds to gather a batch before invoking (MaximumBatchingWindowInSeconds).",
    ),
]
MaxConcurrency = Annotated[
    int | None,
    typer.Option(
        min=2, max=1000, help="Most concurrent invocations (ScalingConfig.MaximumConcurrency)."
    ),
]


def _source_arn(client: Client, queue: str) -> str:
    """QUEUE as an ARN: an ARN as given, else a queue name of the caller's account."""
    if queue.startswith("arn:"):
        return queue
    account = client.whoami()["account_id"]
    return f"arn:aws:sqs:{client.region}:{account}:{queue}"


def _queue_name(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def _line(found: dict[str, Any]) -> Text:
    function = found["FunctionArn"].split(":function:", 1)[-1]
    extras = [f"batch {found['BatchSize']}"]
    if found.get("MaximumBatchingWindowInSeconds"):
        extras.append(f"window {found['MaximumBatchingWindowInSeconds']} s")
    if "ReportBatchItemFailures" in found.get("FunctionResponseTypes", []):
        extras.append("reports batch item failures")
    concurrency = (found.get("ScalingConfig") or {}).get("MaximumConcurrency")
    if concurrency:
        extras.append(f"at most {concurrency} at once")
    return Text(
        f"mapping {found['UUID']}: {_queue_name(found['EventSourceArn'])} → {function}, "
        f"{found['State']}, {', '.join(extras)}"
    )


def _show(found: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(found)
    else:
        render.console().print(_line(found))


def _settings(
    batch_size: int | None,
    window: int | None,
    report_failures: bool | None,
    max_concurrency: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if batch_size is not None:
        body["BatchSize"] = batch_size
    if window is not None:
        body["MaximumBatchingWindowInSeconds"] = window
    if report_failures is not None:
        body["FunctionResponseTypes"] = ["ReportBatchItemFailures"] if report_failures else []
    if max_concurrency is not None:
        body["ScalingConfig"] = {"MaximumConcurrency": max_concurrency}
    return body


@mapping_app.command("add")
@reports_errors
def add(
    queue: Annotated[str, typer.Argument(metavar="QUEUE", help="Queue name or ARN.")],
    function: Annotated[str, typer.Argument(metavar="FUNCTION", help="NAME[:QUALIFIER].")],
    batch_size: BatchSize = None,
    window: Window = None,
    report_batch_item_failures: Annotated[
        bool,
        typer.Option(
            "--report-batch-item-failures",
            help="The function answers {'batchItemFailures': [...]}; only those are retried.",
        ),
    ] = False,
    max_concurrency: MaxConcurrency = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it disabled (enable it later).")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Invoke FUNCTION with batches of messages from QUEUE."""
    body = _settings(batch_size, window, report_batch_item_failures or None, max_concurrency)
    with connect() as client:
        body.update(
            EventSourceArn=_source_arn(client, queue), FunctionName=function, Enabled=not disabled
        )
        created = client.request("POST", ESM + "/", json_body=body).json()
    _show(created, json_output)


@mapping_app.command("ls")
@reports_errors
def list_mappings(
    queue: Annotated[str | None, typer.Option(help="Only this queue's (name or ARN).")] = None,
    function: Annotated[str | None, typer.Option(help="Only this function's.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """List event source mappings."""
    found: list[dict[str, Any]] = []
    with connect() as client:
        query: dict[str, str | int | None] = {"FunctionName": function, "MaxItems": 10000}
        if queue is not None:
            query["EventSourceArn"] = _source_arn(client, queue)
        while True:
            page = client.request("GET", ESM + "/", query=query).json()
            found += page.get("EventSourceMappings", [])
            if not page.get("NextMarker"):
                break
            query["Marker"] = page["NextMarker"]
    if json_output:
        print_json(found)
        return
    table(
        ["uuid", "queue", "function", "state", "batch", "window s", "batch failures", "max conc."],
        (
            [
                m["UUID"],
                _queue_name(m["EventSourceArn"]),
                m["FunctionArn"].split(":function:", 1)[-1],
                m["State"],
                m["BatchSize"],
                m.get("MaximumBatchingWindowInSeconds", 0),
                "reported"
                if "ReportBatchItemFailures" in m.get("FunctionResponseTypes", [])
                else "",
                (m.get("ScalingConfig") or {}).get("MaximumConcurrency", ""),
            ]
            for m in found
        ),
    )


@mapping_app.command("rm")
@reports_errors
def remove(uuid: MappingId, json_output: JsonOutput = False) -> None:
    """Delete a mapping (messages stay in the queue)."""
    with connect() as client:
        client.request("DELETE", f"{ESM}/{quote(uuid, safe='')}")
    if json_output:
        print_json({"deleted": uuid})
    else:
        render.console().print(Text(f"deleted mapping {uuid}"))


@mapping_app.command("set")
@reports_errors
def update(
    uuid: MappingId,
    batch_size: BatchSize = None,
    window: Window = None,
    report_batch_item_failures: Annotated[
        bool | None,
        typer.Option(
            "--report-batch-item-failures/--no-report-batch-item-failures",
            help="Whether the function reports failed items (batchItemFailures).",
            show_default=False,
        ),
    ] = None,
    max_concurrency: MaxConcurrency = None,
    json_output: JsonOutput = False,
) -> None:
    """Change a mapping's batching, failure reporting or concurrency."""
    body = _settings(batch_size, window, report_batch_item_failures, max_concurrency)
    if not body:
        raise typer.BadParameter("nothing to change", param_hint="options")
    _put(uuid, body, json_output)


@mapping_app.command("enable")
@reports_errors
def enable(uuid: MappingId, json_output: JsonOutput = False) -> None:
    """Start polling the queue again."""
    _put(uuid, {"Enabled": True}, json_output)


@mapping_app.command("disable")
@reports_errors
def disable(uuid: MappingId, json_output: JsonOutput = False) -> None:
    """Stop polling the queue; messages wait there."""
    _put(uuid, {"Enabled": False}, json_output)


def _put(uuid: str, body: dict[str, Any], json_output: bool) -> None:
    with connect() as client:
        updated = client.request("PUT", f"{ESM}/{quote(uuid, safe='')}", json_body=body).json()
    _show(updated, json_output)
