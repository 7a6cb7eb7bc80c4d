"""`EventHub`: the event sources of one Gureum process — SQS queues, event source mappings
(queue → function pollers), async invoke destinations, schedules and topics.

`start()` after the async invoker is running; `close()` (idempotent) stops the pollers and
the scheduler first, then commits queue sends already accepted.
"""

from __future__ import annotations

from gureum.control.registry import Registry
from gureum.events.base import EventJournal
from gureum.events.destinations import Destinations
from gureum.events.mappings import EventSourceMappings
from gureum.events.queue_store import QueueStore
from gureum.events.schedules import Schedules
from gureum.events.sqs_api import SQSAPI
from gureum.events.topics import Topics
from gureum.node.dispatcher import Dispatcher
from gureum.settings import Settings
from gureum.store import Database


class EventHub:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: Registry,
        dispatcher: Dispatcher,
        invoker: EventJournal,
    ) -> None:
        self.settings = settings
        self.invoker = invoker
        self.queues = QueueStore(db, settings.region, poll_s=settings.queue_poll_s)
        self.sqs_api = SQSAPI(self.queues, settings.endpoint, settings.region)
        self.mappings = EventSourceMappings(db, registry, dispatcher, self.queues, settings.region)
        self.topics = Topics(db, registry, invoker, self.queues, settings.region)
        invoker.destinations = Destinations(
            invoker, self.queues, registry, settings.region, self.topics
        )
        self.schedules = Schedules(
            db, registry, invoker, settings.region, allow_seconds=settings.schedule_allow_seconds
        )
        self._closed = False

    async def start(self) -> None:
        await self.mappings.start()
        self.schedules.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.schedules.close()
        await self.mappings.close()
