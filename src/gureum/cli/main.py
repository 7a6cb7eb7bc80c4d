"""The `gureum` command. Every command but `up` talks to a running server through `Client`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gureum.cli import functions, mappings, objects, operations, render, routes, schedules
from gureum.cli.render import reports_errors
from gureum.settings import Settings

HELP = """\
Gureum: run AWS-Lambda-style Python functions on your own machines.

Start a server with `gureum up`; the other commands talk to it. They find it through
GUREUM_ENDPOINT (or AWS_ENDPOINT_URL), else the `endpoint` file `gureum up` writes into the
data dir (GUREUM_DATA_DIR, default ~/.gureum), else http://127.0.0.1:8070. They sign requests
with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) if set, else with the
root credentials in the data dir.

Aliases: `gureum alias NAME ALIAS VERSION` creates or updates one, `gureum alias-ls NAME`
lists them and `gureum alias-rm NAME ALIAS` deletes one.

Every command takes --json for machine-readable output. Errors go to stderr as
`error: <code>: <message>` with exit code 1; usage errors exit with 2.
"""

app = typer.Typer(
    name="gureum",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    # never render locals: they can hold credentials
    pretty_exceptions_enable=False,
)


# ---- server -----------------------------------------------------------------------------------


@app.command()
@reports_errors
def up(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: GUREUM_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Port; 0 picks a free one [default: GUREUM_PORT or 8070]"
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="State directory [default: GUREUM_DATA_DIR or ~/.gureum]"
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="Deploy the demo function `hello`.")
    ] = False,
) -> None:
    """Run a Gureum server in the foreground until Ctrl-C or SIGTERM."""
    # imported here: the server stack takes most of a second to import, other commands need none
    from gureum.cli.serve import serve

    settings = Settings.from_env(os.environ).with_overrides(
        host=host, port=port, data_dir=data_dir.expanduser().resolve() if data_dir else None
    )
    serve(settings, demo=demo, out=render.console(soft_wrap=True))


# ---- every other command talks to a running server ------------------------------------------

app.command("deploy")(functions.deploy)
app.command("invoke")(functions.invoke)
app.command("ls")(functions.list_functions)
app.command("rm")(functions.remove)
app.command("publish")(functions.publish)
app.command("versions")(functions.versions)
app.command("alias")(functions.alias_set)
app.command("alias-ls")(functions.alias_list)
app.command("alias-rm")(functions.alias_remove)
app.command("logs")(operations.logs)
app.command("invocations")(operations.invocations)
app.command("events")(operations.events)
app.command("redrive")(operations.redrive)
app.command("scale")(operations.scale)
app.command("doctor")(operations.doctor)
app.command("whoami")(operations.whoami)
app.add_typer(objects.bucket_app, name="bucket")
app.command("cp")(objects.copy)
app.add_typer(objects.notify_app, name="notify")
app.add_typer(routes.route_app, name="route")
app.add_typer(routes.api_app, name="api")
app.add_typer(routes.key_app, name="api-key")
app.add_typer(schedules.schedule_app, name="schedule")
app.add_typer(schedules.topic_app, name="topic")
app.add_typer(mappings.mapping_app, name="mapping")
