"""Management API routes for schedules and topics (pub/sub). Included by
`build_management_api`; requests are authenticated before they get here."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from gureum.iam.sigv4 import Identity
from gureum.platform import Platform


def _caller(request: Request) -> Identity:
    found: Identity = request.scope["gureum.identity"]
    return found


Caller = Annotated[Identity, Depends(_caller)]


class NewSchedule(BaseModel):
    name: str = Field(max_length=64)
    expression: str = Field(
        max_length=256, description="rate(5 minutes), cron(0 12 * * ? *), 0 12 * * *, at(…)"
    )
    target: str = Field(max_length=200, description="function NAME[:QUALIFIER]")
    input: Any = Field(None, description="fixed JSON input; omit for the Scheduled Event")
    timezone: str = Field("UTC", max_length=64, description="IANA zone, e.g. Europe/Berlin")
    missed: str = Field("fire-once", description="after downtime: fire-once | skip")


class NewTopic(BaseModel):
    name: str = Field(max_length=256)


class NewSubscription(BaseModel):
    endpoint: str = Field(max_length=300, description="function:NAME[:QUALIFIER] | queue:NAME")
    filter_policy: dict[str, Any] | None = Field(None, description="SNS-style attribute filter")


class Publication(BaseModel):
    message: str
    attributes: dict[str, Any] | None = Field(
        None, description='{"name": "text" | 42 | {"Type": "String", "Value": "…"}}'
    )
    subject: str | None = Field(None, max_length=100)


def schedules_router(platform: Platform) -> APIRouter:
    router = APIRouter()
    region = platform.settings.region

    schedules = platform.events.schedules
    topics = platform.events.topics

    # ---- schedules ---------------------------------------------------------------------------

    @router.post("/schedules", status_code=201)
    async def create_schedule(body: NewSchedule, identity: Caller) -> dict[str, Any]:
        """Create a schedule that invokes a function asynchronously on every tick."""
        created = await schedules.create(
            identity.account_id,
            body.name,
            body.expression,
            body.target,
            input=None if body.input is None else json.dumps(body.input),
            timezone=body.timezone,
            missed=body.missed,
        )
        return created.to_json(region)

    @router.get("/schedules")
    async def list_schedules(identity: Caller) -> list[dict[str, Any]]:
        return [s.to_json(region) for s in await schedules.list_schedules(identity.account_id)]

    @router.get("/schedules/{name}")
    async def get_schedule(name: str, identity: Caller) -> dict[str, Any]:
        return (await schedules.get(identity.account_id, name)).to_json(region)

    @router.delete("/schedules/{name}", status_code=204)
    async def delete_schedule(name: str, identity: Caller) -> Response:
        await schedules.delete(identity.account_id, name)
        return Response(status_code=204)

    @router.post("/schedules/{name}/pause")
    async def pause_schedule(name: str, identity: Caller) -> dict[str, Any]:
        return (await schedules.pause(identity.account_id, name)).to_json(region)

    @router.post("/schedules/{name}/resume")
    async def resume_schedule(name: str, identity: Caller) -> dict[str, Any]:
        return (await schedules.resume(identity.account_id, name)).to_json(region)

    # ---- topics ------------------------------------------------------------------------------

    @router.post("/topics", status_code=201)
    async def create_topic(body: NewTopic, identity: Caller) -> dict[str, Any]:
        """Create a topic (or return the existing one of that name)."""
        return await topics.create(identity.account_id, body.name)

    @router.get("/topics")
    async def list_topics(identity: Caller) -> list[dict[str, Any]]:
        return await topics.list_topics(identity.account_id)

    @router.get("/topics/{name}")
    async def get_topic(name: str, identity: Caller) -> dict[str, Any]:
        return await topics.get(identity.account_id, name)

    @router.delete("/topics/{name}", status_code=204)
    async def delete_topic(name: str, identity: Caller) -> Response:
        await topics.delete(identity.account_id, name)
        return Response(status_code=204)

    @router.post("/topics/{name}/subscriptions", status_code=201)
    async def subscribe(name: str, body: NewSubscription, identity: Caller) -> dict[str, Any]:
        """Subscribe a function or a standard queue, optionally with a filter policy."""
        created = await topics.subscribe(
            identity.account_id, name, body.endpoint, body.filter_policy
        )
        return created.to_json(region)

    @router.get("/topics/{name}/subscriptions")
    async def list_subscriptions(name: str, identity: Caller) -> list[dict[str, Any]]:
        return [s.to_json(region) for s in await topics.subscriptions(identity.account_id, name)]

    @router.delete("/subscriptions/{subscription_id}", status_code=204)
    async def unsubscribe(subscription_id: str, identity: Caller) -> Response:
        await topics.unsubscribe(identity.account_id, subscription_id)
        return Response(status_code=204)

    @router.post("/topics/{name}/publish")
    async def publish(name: str, body: Publication, identity: Caller) -> dict[str, Any]:
        """Deliver a message to every matching subscription; returns once all are durable."""
        return await topics.publish(
            identity.account_id, name, body.message, body.attributes, body.subject
        )

    return router
