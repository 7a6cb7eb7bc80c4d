"""The trivial function both benchmark targets run: Gureum deploys this file as its code package,
and the baseline ASGI app imports it and calls `handler` in-process."""

from typing import Any


def handler(event: Any, context: Any) -> dict[str, bool]:
    return {"ok": True}
