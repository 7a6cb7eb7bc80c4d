"""`gureum schedule …` and `gureum topic …`: functions run on a schedule, and pub/sub topics."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.text import Text

from gureum.cli import render
from gureum.cli.options import JsonOutput, connect, parse_pairs
from gureum.cli.render import print_json, reports_errors, table

schedule_app = typer.Typer(
    help="Run functions on a schedule: rate(…), cron(…) (AWS, 6 fields), 5-field cron, at(…).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
topic_app = typer.Typer(
    help="Pub/sub topics: fan a published message out to functions and queues.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ScheduleName = Annotated[str, typer.Argument(metavar="NAME", help="Schedule name.")]
TopicName = Annotated[str, typer.Argument(metavar="TOPIC", help="Topic name.")]


class MissedPolicy(StrEnum):
    fire_once = "fire-once"
    skip = "skip"


def _json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None


def _schedule_line(found: dict[str, Any]) -> Text:
    following = render.timestamp(found.get("next_tick")) or "none"
    return Text(
        f"schedule {found['name']}: {found['expression']} ({found['timezone']}) → "
        f"{found['target']}, {found['state']}, next tick {following}"
    )


# ---- schedules --------------------------------------------------------------------------------


@schedule_app.command("add")
@reports_errors
def add(
    name: ScheduleName,
    expression: Annotated[
        str,
        typer.Argument(
            metavar="EXPR",
            help="'rate(5 minutes)', 'cron(0 12 * * ? *)', '0 12 * * 1-5' or "
            "'at(2030-01-01T09:00:00)' (quote it).",
        ),
    ],
    function: Annotated[str, typer.Argument(metavar="FUNCTION", help="NAME[:QUALIFIER].")],
    input_json: Annotated[
        str | None,
        typer.Option("--input", help="Fixed JSON input [default: the Scheduled Event]."),
    ] = None,
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone, e.g. Europe/Berlin.")] = "UTC",
    missed: Annotated[
        MissedPolicy,
        typer.Option(help="After downtime: fire one catch-up tick, or skip missed ticks."),
    ] = MissedPolicy.fire_once,
    json_output: JsonOutput = False,
) -> None:
    """Invoke FUNCTION asynchronously on every tick of EXPR."""
    payload = _json_option(input_json, "--input")
    with connect() as client:
        created = client.create_schedule(
            name, expression, function, input=payload, timezone=tz, missed=missed.value
        )
    if json_output:
        print_json(created)
    else:
        render.console().print(_schedule_line(created))


@schedule_app.command("ls")
@reports_errors
def list_schedules(json_output: JsonOutput = False) -> None:
    """List schedules with their state and next tick."""
    with connect() as client:
        found = client.list_schedules()
    if json_output:
        print_json(found)
        return
    table(
        ["name", "expression", "zone", "target", "state", "next tick", "last tick", "fired"],
        (
            [
                s["name"],
                s["expression"],
                s["timezone"],
                s["target"],
                s["state"] + (" (skip missed)" if s["missed"] == "skip" else ""),
                render.timestamp(s.get("next_tick")),
                render.timestamp(s.get("last_tick")),
                s["fired"],
            ]
            for s in found
        ),
    )


@schedule_app.command("rm")
@reports_errors
def remove(name: ScheduleName, json_output: JsonOutput = False) -> None:
    """Delete a schedule (events it already sent still run)."""
    with connect() as client:
        client.delete_schedule(name)
    if json_output:
        print_json({"deleted": name})
    else:
        render.console().print(Text(f"deleted schedule {name}"))


@schedule_app.command("pause")
@reports_errors
def pause(name: ScheduleName, json_output: JsonOutput = False) -> None:
    """Stop firing a schedule until it is resumed."""
    with connect() as client:
        found = client.pause_schedule(name)
    if json_output:
        print_json(found)
    else:
        render.console().print(_schedule_line(found))


@schedule_app.command("resume")
@reports_errors
def resume(name: ScheduleName, json_output: JsonOutput = False) -> None:
    """Fire a paused schedule again, from its first tick after now."""
    with connect() as client:
        found = client.resume_schedule(name)
    if json_output:
        print_json(found)
    else:
        render.console().print(_schedule_line(found))


# ---- topics -----------------------------------------------------------------------------------


@topic_app.command("create")
@reports_errors
def create_topic(topic: TopicName, json_output: JsonOutput = False) -> None:
    """Create a topic (creating an existing one is a no-op)."""
    with connect() as client:
        created = client.create_topic(topic)
    if json_output:
        print_json(created)
    else:
        render.console().print(Text(f"topic {created['name']}: {created['arn']}"))


@topic_app.command("ls")
@reports_errors
def list_topics(
    topic: Annotated[
        str | None, typer.Argument(metavar="[TOPIC]", help="Show this topic's subscriptions.")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """List topics, or one topic's subscriptions."""
    with connect() as client:
        found = client.list_topics() if topic is None else client.list_subscriptions(topic)
    if json_output:
        print_json(found)
    elif topic is None:
        table(
            ["topic", "subscriptions", "arn"],
            ([t["name"], t["subscriptions"], t["arn"]] for t in found),
        )
    else:
        table(
            ["subscription", "endpoint", "filter"],
            (
                [
                    s["id"],
                    s["endpoint"],
                    json.dumps(s["filter_policy"]) if s.get("filter_policy") else None,
                ]
                for s in found
            ),
        )


@topic_app.command("rm")
@reports_errors
def remove_topic(topic: TopicName, json_output: JsonOutput = False) -> None:
    """Delete a topic and its subscriptions."""
    with connect() as client:
        client.delete_topic(topic)
    if json_output:
        print_json({"deleted": topic})
    else:
        render.console().print(Text(f"deleted topic {topic}"))


@topic_app.command("subscribe")
@reports_errors
def subscribe(
    topic: TopicName,
    endpoint: Annotated[
        str,
        typer.Argument(metavar="ENDPOINT", help="function:NAME[:QUALIFIER] or queue:NAME."),
    ],
    filter_json: Annotated[
        str | None,
        typer.Option(
            "--filter", help='Attribute filter policy, e.g. \'{"color": ["red", "blue"]}\'.'
        ),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Deliver the topic's messages to a function or a queue."""
    policy = _json_option(filter_json, "--filter")
    with connect() as client:
        created = client.subscribe(topic, endpoint, policy)
    if json_output:
        print_json(created)
    else:
        render.console().print(Text(f"subscribed {created['endpoint']}: {created['id']}"))


@topic_app.command("unsubscribe")
@reports_errors
def unsubscribe(
    subscription: Annotated[str, typer.Argument(metavar="SUBSCRIPTION", help="Id or ARN.")],
    json_output: JsonOutput = False,
) -> None:
    """Remove a subscription."""
    with connect() as client:
        client.unsubscribe(subscription)
    if json_output:
        print_json({"deleted": subscription})
    else:
        render.console().print(Text(f"unsubscribed {subscription}"))


@topic_app.command("publish")
@reports_errors
def publish(
    topic: TopicName,
    message: Annotated[str, typer.Argument(metavar="MESSAGE", help="The message text.")],
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", help="Message attribute K=V (string); repeat for more."),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="Subject line.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Publish MESSAGE to every matching subscription of TOPIC."""
    attributes = parse_pairs(attr, "--attr")
    with connect() as client:
        result = client.publish_message(topic, message, attributes, subject)
    if json_output:
        print_json(result)
    else:
        render.console().print(
            Text(f"published {result['message_id']} to {result['deliveries']} subscription(s)")
        )
