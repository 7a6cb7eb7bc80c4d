"""One `Settings` object for the whole platform, built once from an environment mapping.

Only the CLI (and tests) build it; everything else receives it as an argument.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gureum.errors import ConfigurationError

DEFAULT_DATA_DIR = Path("~/.gureum")


def _int(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{key} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{key} must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one Gureum process. Immutable; derive with `replace()`."""

    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR.expanduser())
    host: str = "127.0.0.1"
    port: int = 8070
    region: str = "us-east-1"
    # metadata store; empty means SQLite in the data dir (the embedded shape)
    database_url: str = ""
    # sandbox driver: "linux" (namespaces, cgroups, seccomp), "process" (rlimits only), or
    # "auto" = linux where the host allows it, else process with a loud warning
    sandbox: str = "auto"
    warm_sandboxes: int = 2  # pre-spawned linux sandboxes kept ready for cold starts
    # linux: fork a version's later instances from an initialised template of it
    templates: bool = True
    max_templates: int = 16  # templates alive at once (least recently used retire first)
    # node capacity and pool behaviour
    max_instances: int = 64  # all functions together on this node
    default_concurrency: int = 32  # per function when no reserved concurrency is set
    queue_depth: int = 64  # invocations allowed to wait for an instance, per function
    queue_wait_s: float = 10.0  # how long one may wait before it is throttled
    keep_alive_s: float = 300.0  # idle instance lifetime (scale to zero)
    # async (Event) invocations
    async_workers: int = 8
    async_retry_base_s: float = 1.0  # first retry delay; doubles per attempt, with jitter
    async_poll_s: float = 0.5
    # queues and event source mappings
    queue_poll_s: float = 1.0  # long polls and queue pollers re-check the store this often
    idempotency_window_s: float = 24 * 3600.0  # async Idempotency-Key dedupe window
    # test-only: admit rate(N seconds) schedules, so tests need not wait minutes
    schedule_allow_seconds: bool = False
    # root credentials offered on first start (like MinIO's root user)
    root_access_key_id: str | None = None
    root_secret_access_key: str | None = None
    log_level: str = "info"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'gureum.db'}"

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `GUREUM_*` variables; raise ConfigurationError on bad values."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("GUREUM_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()
        sandbox = env.get("GUREUM_SANDBOX", "auto")
        if sandbox not in ("auto", "linux", "process"):
            raise ConfigurationError(
                f"GUREUM_SANDBOX must be 'auto', 'linux' or 'process', got {sandbox!r}"
            )
        return cls(
            data_dir=data_dir,
            host=env.get("GUREUM_HOST", "127.0.0.1"),
            port=_int(env, "GUREUM_PORT", 8070, 0, 65535),
            region=env.get("GUREUM_REGION", "us-east-1"),
            database_url=env.get("GUREUM_DATABASE_URL", ""),
            sandbox=sandbox,
            warm_sandboxes=_int(env, "GUREUM_WARM_SANDBOXES", 2, 0, 64),
            templates=env.get("GUREUM_TEMPLATES", "1") not in ("0", "false", "off"),
            max_templates=_int(env, "GUREUM_MAX_TEMPLATES", 16, 0, 10_000),
            max_instances=_int(env, "GUREUM_MAX_INSTANCES", 64, 1, 100_000),
            default_concurrency=_int(env, "GUREUM_DEFAULT_CONCURRENCY", 32, 1, 100_000),
            queue_depth=_int(env, "GUREUM_QUEUE_DEPTH", 64, 0, 1_000_000),
            queue_wait_s=_float(env, "GUREUM_QUEUE_WAIT_S", 10.0),
            keep_alive_s=_float(env, "GUREUM_KEEP_ALIVE_S", 300.0),
            async_workers=_int(env, "GUREUM_ASYNC_WORKERS", 8, 1, 1024),
            async_retry_base_s=_float(env, "GUREUM_ASYNC_RETRY_BASE_S", 1.0),
            async_poll_s=_float(env, "GUREUM_ASYNC_POLL_S", 0.5),
            queue_poll_s=_float(env, "GUREUM_QUEUE_POLL_S", 1.0),
            idempotency_window_s=_float(env, "GUREUM_IDEMPOTENCY_WINDOW_S", 24 * 3600.0),
            schedule_allow_seconds=env.get("GUREUM_SCHEDULE_ALLOW_SECONDS") in ("1", "true"),
            root_access_key_id=env.get("GUREUM_ROOT_ACCESS_KEY_ID") or None,
            root_secret_access_key=env.get("GUREUM_ROOT_SECRET_ACCESS_KEY") or None,
            log_level=env.get("GUREUM_LOG_LEVEL", "info"),
        )
