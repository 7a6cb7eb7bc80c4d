"""Async invoke configuration per function (and qualifier), as Lambda's
Put/Get/Update/DeleteFunctionEventInvokeConfig: retries, event age and destinations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gureum.control.models import LATEST
from gureum.errors import InvalidParameterValue, ResourceNotFound
from gureum.store import Database
from gureum.store.schema import event_invoke_configs

DEFAULT_RETRIES = 2
DEFAULT_MAX_AGE_S = 6 * 3600
LOOKUP_TTL_S = 2.0  # other nodes' changes reach this one's enqueues within this time
c = event_invoke_configs.c


@dataclass(frozen=True)
class InvokeConfig:
    account_id: str
    function_name: str
    qualifier: str
    max_retry_attempts: int | None
    max_event_age_s: int | None
    on_success: str | None
    on_failure: str | None
    last_modified: float

    @property
    def retries(self) -> int:
        return DEFAULT_RETRIES if self.max_retry_attempts is None else self.max_retry_attempts

    @property
    def max_age_s(self) -> int:
        return DEFAULT_MAX_AGE_S if self.max_event_age_s is None else self.max_event_age_s

    def to_aws(self, region: str) -> dict[str, Any]:
        arn = f"arn:aws:lambda:{region}:{self.account_id}:function:{self.function_name}"
        out: dict[str, Any] = {
            "LastModified": self.last_modified,
            "FunctionArn": f"{arn}:{self.qualifier}",
            "DestinationConfig": {
                "OnSuccess": {"Destination": self.on_success} if self.on_success else {},
                "OnFailure": {"Destination": self.on_failure} if self.on_failure else {},
            },
        }
        if self.max_retry_attempts is not None:
            out["MaximumRetryAttempts"] = self.max_retry_attempts
        if self.max_event_age_s is not None:
            out["MaximumEventAgeInSeconds"] = self.max_event_age_s
        return out


def destination_kind(arn: str) -> str:
    """'queue', 'function' or 'topic' for a destination ARN; InvalidParameterValue else."""
    parts = arn.split(":")
    if len(parts) >= 6 and parts[0] == "arn":
        if parts[2] == "sqs" and len(parts) == 6:
            return "queue"
        if parts[2] == "lambda" and parts[5] == "function" and len(parts) in (7, 8):
            return "function"
        if parts[2] == "sns" and len(parts) == 6:
            return "topic"
    raise InvalidParameterValue(
        f"The destination ARN {arn} is invalid: use an SQS queue, SNS topic or Lambda function ARN"
    )


class InvokeConfigs:
    """Stored event invoke configs; `lookup()` falls back to AWS's defaults."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[tuple[str, str, str], tuple[float, InvokeConfig]] = {}

    async def put(
        self, account: str, name: str, qualifier: str | None, body: dict[str, Any], *, merge: bool
    ) -> InvokeConfig:
        """Put (replace) or, with `merge`, update the config from a Lambda API body."""
        qualifier = qualifier or LATEST
        current = await self.find(account, name, qualifier) if merge else None
        values: dict[str, Any] = {
            "max_retry_attempts": current.max_retry_attempts if current else None,
            "max_event_age_s": current.max_event_age_s if current else None,
            "on_success": current.on_success if current else None,
            "on_failure": current.on_failure if current else None,
        }
        if "MaximumRetryAttempts" in body:
            value = body["MaximumRetryAttempts"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2:
                raise InvalidParameterValue("MaximumRetryAttempts must be between 0 and 2")
            values["max_retry_attempts"] = value
        if "MaximumEventAgeInSeconds" in body:
            value = body["MaximumEventAgeInSeconds"]
            if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= 21600:
                raise InvalidParameterValue("MaximumEventAgeInSeconds must be between 60 and 21600")
            values["max_event_age_s"] = value
        destinations = body.get("DestinationConfig")
        if destinations is not None:
            if not isinstance(destinations, dict):
                raise InvalidParameterValue("DestinationConfig must be an object")
            for key, column in (("OnSuccess", "on_success"), ("OnFailure", "on_failure")):
                if key not in destinations:
                    continue
                target = (destinations[key] or {}).get("Destination")
                if target:
                    destination_kind(str(target))
                values[column] = target or None
        now = time.time()
        self._cache.pop((account, name, qualifier), None)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                event_invoke_configs.delete().where(
                    c.account_id == account, c.function_name == name, c.qualifier == qualifier
                )
            )
            await conn.execute(
                event_invoke_configs.insert().values(
                    account_id=account,
                    function_name=name,
                    qualifier=qualifier,
                    last_modified=now,
                    **values,
                )
            )
        return InvokeConfig(account, name, qualifier, last_modified=now, **values)

    async def find(self, account: str, name: str, qualifier: str | None) -> InvokeConfig | None:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(event_invoke_configs).where(
                        c.account_id == account,
                        c.function_name == name,
                        c.qualifier == (qualifier or LATEST),
                    )
                )
            ).first()
        return None if row is None else InvokeConfig(**row._mapping)

    async def get(self, account: str, name: str, qualifier: str | None) -> InvokeConfig:
        found = await self.find(account, name, qualifier)
        if found is None:
            raise ResourceNotFound(f"The function {name} doesn't have an EventInvokeConfig")
        return found

    async def lookup(self, account: str, name: str, qualifier: str | None) -> InvokeConfig:
        """The config an async event of this function follows (defaults when none is set)."""
        key = (account, name, qualifier or LATEST)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < LOOKUP_TTL_S:
            return cached[1]
        found = await self.find(account, name, qualifier) or InvokeConfig(
            account, name, qualifier or LATEST, None, None, None, None, 0.0
        )
        self._cache[key] = (time.monotonic(), found)
        return found

    async def delete(self, account: str, name: str, qualifier: str | None) -> None:
        await self.get(account, name, qualifier)
        self._cache.pop((account, name, qualifier or LATEST), None)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                event_invoke_configs.delete().where(
                    c.account_id == account,
                    c.function_name == name,
                    c.qualifier == (qualifier or LATEST),
                )
            )
