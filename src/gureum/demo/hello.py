"""Gureum's demo function, deployed as `hello` by `gureum up --demo`.

It is an ordinary AWS-Lambda-style handler: copy it, change it, `gureum deploy` it.
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Greet `event["name"]` (or the world) and say which request this was."""
    name = event.get("name") if isinstance(event, dict) else None
    print(f"greeting {name or 'world'}")
    return {
        "message": f"Hello, {name or 'world'}! Greetings from Gureum.",
        "request_id": context.aws_request_id,
        "function": context.function_name,
        "version": context.function_version,
    }
