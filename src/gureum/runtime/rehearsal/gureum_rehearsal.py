"""Loaded as a handler by `bootstrap.rehearse()` while a pre-spawned sandbox waits: a module in
a directory of its own, as a function's handler is. Never a function's code."""


def handler(event: object, context: object) -> dict[str, bool]:
    return {"ok": True}
