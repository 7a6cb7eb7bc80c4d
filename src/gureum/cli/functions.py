"""`gureum` commands that manage functions: deploy, invoke, list, remove, versions, aliases."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from gureum.cli import render
from gureum.cli.bundle import handler_module_present, zip_directory
from gureum.cli.options import FunctionName, JsonOutput, connect, parse_pairs, split_qualifier
from gureum.cli.render import print_json, reports_errors, table
from gureum.client import InvokeResult
from gureum.control.models import NETWORK_MODES
from gureum.errors import InvalidParameterValue, InvalidRequestContent, ResourceNotFound

# ---- functions --------------------------------------------------------------------------------


@reports_errors
def deploy(
    name: FunctionName,
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            exists=True,
            file_okay=False,
            readable=True,
            help="Directory with the function's code; it is zipped (without __pycache__, .git).",
            show_default=False,
        ),
    ],
    handler: Annotated[
        str, typer.Option(help="module.function to call, e.g. app.handler.", show_default=False)
    ],
    runtime: Annotated[
        str | None, typer.Option(help="Runtime [default: python3.11 for new functions]")
    ] = None,
    memory: Annotated[int | None, typer.Option(help="Memory in MB (128-10240).")] = None,
    timeout: Annotated[int | None, typer.Option(help="Timeout in seconds (1-900).")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="KEY=VALUE",
            help="Environment variable (repeatable; replaces all variables).",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    network: Annotated[
        str | None,
        typer.Option(
            help="What the sandbox may reach: none, platform (Gureum's APIs), or internet "
            "(also allow-listed hosts through the egress proxy)."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="HOST",
            help="With --network internet: a host it may reach (host, *.suffix, host:port; "
            "repeatable). Without any, public hosts only.",
        ),
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="Publish a version afterwards.")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Create a function from a directory, or update its code and then its configuration."""
    environment = parse_pairs(env, "--env") if env else None
    package = zip_directory(directory)
    if not handler_module_present(package, handler):
        module = handler.rpartition(".")[0] or handler
        render.console(stderr=True).print(
            Text(f"warning: {directory} has no module {module!r} for handler {handler!r}"),
            style="yellow",
        )
    with connect() as client:
        if network is not None and network not in NETWORK_MODES:
            raise InvalidParameterValue(f"--network must be one of {', '.join(NETWORK_MODES)}")
        if allow_host and network != "internet":
            raise InvalidParameterValue("--allow-host needs --network internet")
        try:
            client.get_function(name)
        except ResourceNotFound:
            config = client.create_function(
                name,
                package,
                handler,
                runtime or "python3.11",
                memory_mb=memory,
                timeout_s=timeout,
                environment=environment,
                description=description,
            )
            action = "created"
        else:
            client.update_function_code(name, package)
            config = client.update_function_configuration(
                name,
                handler=handler,
                runtime=runtime,
                memory_mb=memory,
                timeout_s=timeout,
                environment=environment,
                description=description,
            )
            action = "updated"
        if network is not None:
            client.set_network(name, network, allow_host)
        if publish:  # after every change, so the version has them all
            config = client.publish_version(name)
    if json_output:
        print_json({"action": action, "function": config})
        return
    version = config["Version"]
    out = render.console()
    out.print(
        Text(
            f"{action} {name} ({render.size(len(package))} zipped, "
            f"sha256 {config['CodeSha256']}, version {version})"
        )
    )
    target = name if version == "$LATEST" else f"{name}:{version}"
    out.print(Text(f"invoke it: gureum invoke {target}"))


@reports_errors
def invoke(
    target: Annotated[
        str,
        typer.Argument(
            metavar="NAME[:QUALIFIER]", help="Function, optionally with a version or alias."
        ),
    ],
    payload: Annotated[
        str | None,
        typer.Option(help="JSON event: inline, @file, or - for stdin [default: {}]"),
    ] = None,
    run_async: Annotated[
        bool, typer.Option("--async", help="Queue the invocation (Event) and return at once.")
    ] = False,
    log: Annotated[bool, typer.Option("--log", help="Print the log tail to stderr.")] = False,
    json_output: JsonOutput = False,
) -> None:
    """Invoke a function and print its response; exit 1 when the function fails."""
    name, qualifier = split_qualifier(target)
    event = _read_payload(payload)
    with connect() as client:
        result = client.invoke(
            name,
            event,
            qualifier,
            invocation_type="Event" if run_async else "RequestResponse",
            log_tail=log and not run_async,
        )
    if json_output:
        print_json(_result_document(result))
    elif run_async:
        render.console().print(
            Text(f"queued {result.request_id}; follow it with `gureum events` and `gureum logs`")
        )
    elif result.function_error is None:
        typer.echo(render.payload_text(result.payload))
    if log and result.log and not json_output:
        typer.echo(result.log.rstrip("\n"), err=True)
    if result.function_error is not None:
        if not json_output:
            _report_function_error(result)
        raise typer.Exit(1)


def _read_payload(spec: str | None) -> bytes:
    if spec is None:
        return b"{}"
    if spec == "-":
        raw = sys.stdin.buffer.read()
    elif spec.startswith("@"):
        try:
            raw = Path(spec[1:]).read_bytes()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {spec[1:]}: {exc.strerror}") from None
    else:
        raw = spec.encode()
    try:
        json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestContent(f"--payload is not valid JSON: {exc}") from None
    return raw


def _result_document(result: InvokeResult) -> dict[str, Any]:
    try:
        payload: Any = result.json()
    except ValueError:
        payload = result.payload.decode(errors="replace")
    return {
        "status": result.status,
        "request_id": result.request_id,
        "executed_version": result.executed_version,
        "function_error": result.function_error,
        "payload": payload,
        "log": result.log,
    }


def _report_function_error(result: InvokeResult) -> None:
    try:
        error = json.loads(result.payload)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {"errorMessage": render.payload_text(result.payload)}
    kind = error.get("errorType") or result.function_error
    typer.echo(f"error: {kind}: {error.get('errorMessage', '')}", err=True)
    for line in error.get("stackTrace") or []:
        typer.echo(f"  {str(line).rstrip()}", err=True)
    typer.echo(f"  (request id {result.request_id})", err=True)


@reports_errors
def list_functions(json_output: JsonOutput = False) -> None:
    """List functions."""
    with connect() as client:
        functions = client.list_functions()
    if json_output:
        print_json(functions)
        return
    table(
        ["name", "runtime", "handler", "memory MB", "timeout s", "code", "modified", "description"],
        (
            [
                f["FunctionName"],
                f["Runtime"],
                f["Handler"],
                f["MemorySize"],
                f["Timeout"],
                render.size(f["CodeSize"]),
                f["LastModified"][:19].replace("T", " "),
                f["Description"],
            ]
            for f in functions
        ),
    )


@reports_errors
def remove(
    target: Annotated[
        str,
        typer.Argument(
            metavar="NAME[:VERSION]", help="Function, or only one published version of it."
        ),
    ],
    json_output: JsonOutput = False,
) -> None:
    """Delete a function (with all versions and aliases), or one published version."""
    name, version = split_qualifier(target)
    with connect() as client:
        client.delete_function(name, version)
    if json_output:
        print_json({"deleted": name, "version": version})
    else:
        what = f"{name} version {version}" if version else name
        render.console().print(Text(f"deleted {what}"))


# ---- versions and aliases ---------------------------------------------------------------------


@reports_errors
def publish(
    name: FunctionName,
    description: Annotated[str | None, typer.Option(help="Version description.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Publish $LATEST as a new immutable version."""
    with connect() as client:
        config = client.publish_version(name, description)
    if json_output:
        print_json(config)
    else:
        render.console().print(Text(f"published {name} version {config['Version']}"))


@reports_errors
def versions(name: FunctionName, json_output: JsonOutput = False) -> None:
    """List a function's versions."""
    with connect() as client:
        every = client.list_versions(name)
    if json_output:
        print_json(every)
        return
    table(
        ["version", "code sha256", "code", "modified", "description"],
        (
            [
                v["Version"],
                v["CodeSha256"][:16],
                render.size(v["CodeSize"]),
                v["LastModified"][:19].replace("T", " "),
                v["Description"],
            ]
            for v in every
        ),
    )


@reports_errors
def alias_set(
    name: FunctionName,
    alias: Annotated[
        str, typer.Argument(metavar="ALIAS", help="Alias name, e.g. live.", show_default=False)
    ],
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="Version it points to.", show_default=False)
    ],
    weight: Annotated[
        list[str] | None,
        typer.Option(
            "--weight",
            metavar="VERSION=WEIGHT",
            help="Send this share (0-1) of traffic to another version (repeatable).",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Alias description.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Create an alias, or update it: point it at VERSION with exactly the given weights."""
    weights: dict[str, float] = {}
    for key, value in parse_pairs(weight, "--weight").items():
        try:
            weights[key] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"weight must be a number, got {value!r}", param_hint="--weight"
            ) from None
    with connect() as client:
        try:
            client.get_alias(name, alias)
        except ResourceNotFound:
            result = client.create_alias(name, alias, version, description or "", weights)
            action = "created"
        else:
            result = client.update_alias(name, alias, version, description, weights)
            action = "updated"
    if json_output:
        print_json(result)
        return
    split = result.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
    extra = ", ".join(f"{w:.0%} to version {v}" for v, w in split.items())
    render.console().print(
        Text(
            f"{action} alias {name}:{alias} -> version {result['FunctionVersion']}"
            + (f" ({extra})" if extra else "")
        )
    )


@reports_errors
def alias_list(name: FunctionName, json_output: JsonOutput = False) -> None:
    """List a function's aliases."""
    with connect() as client:
        aliases = client.list_aliases(name)
    if json_output:
        print_json(aliases)
        return
    table(
        ["alias", "version", "weights", "description"],
        (
            [
                a["Name"],
                a["FunctionVersion"],
                ", ".join(
                    f"{v}={w}"
                    for v, w in a.get("RoutingConfig", {})
                    .get("AdditionalVersionWeights", {})
                    .items()
                )
                or None,
                a["Description"],
            ]
            for a in aliases
        ),
    )


@reports_errors
def alias_remove(
    name: FunctionName,
    alias: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias name.", show_default=False)],
    json_output: JsonOutput = False,
) -> None:
    """Delete an alias."""
    with connect() as client:
        client.delete_alias(name, alias)
    if json_output:
        print_json({"deleted": f"{name}:{alias}"})
    else:
        render.console().print(Text(f"deleted alias {name}:{alias}"))
