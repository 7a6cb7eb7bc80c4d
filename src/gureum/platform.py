"""`Platform`: every component of one Gureum process, built from `Settings`.

Open with `Platform.open(settings)`, serve with `gureum.gateway.app.GatewayApp`, and release
with `close()` (idempotent). Order on close: stop taking async work, drain the pool, flush
records, close the store.
"""

from __future__ import annotations

import fcntl
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gureum.control.package_sweeper import PackageSweeper
from gureum.control.packages import PackageStore
from gureum.control.registry import Registry
from gureum.control.route_store import RouteStore
from gureum.errors import ConfigurationError
from gureum.events.async_invoke import AsyncInvoker
from gureum.events.base import EventJournal
from gureum.events.hub import EventHub
from gureum.iam.credentials import KeyRing, RootCredentials, SessionIssuer, load_or_create_root
from gureum.node.dispatcher import Dispatcher
from gureum.node.pool import InstancePool
from gureum.node.records import InvocationRecorder
from gureum.sandbox.base import Sandbox
from gureum.sandbox.libraries import prepare_runtime_libraries
from gureum.sandbox.linux import LinuxSandbox, linux_sandbox_support
from gureum.sandbox.process import ProcessSandbox
from gureum.settings import Settings
from gureum.store import Database
from gureum.store.schema import accounts, functions

log = logging.getLogger(__name__)
FUNCTION_CREDENTIAL_TTL_S = 6 * 3600


def _lock_data_dir(data_dir: Path) -> TextIO:
    """Hold an exclusive lock on the data dir for this process's lifetime."""
    handle = (data_dir / "lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigurationError(
            f"another Gureum process is using {data_dir}; stop it or pick another --data-dir"
        ) from None
    return handle


def make_sandbox(settings: Settings) -> Sandbox:
    """Pick the sandbox driver named in settings (the only place that maps names to drivers).
    `auto` takes the linux driver where the host allows it and says loudly when it cannot."""
    if settings.sandbox in ("auto", "linux"):
        support = linux_sandbox_support()
        why = support.why
        if support.usable:
            sandbox = LinuxSandbox(
                settings.data_dir,
                settings.endpoint,
                support.cgroups,
                warm_target=settings.warm_sandboxes,
                rootless=support.rootless,
                templates=settings.templates and settings.max_templates > 0,
                template_keep_alive_s=settings.keep_alive_s,
                max_templates=settings.max_templates,
            )
            missing = [f"{c.name} ({c.detail})" for c in sandbox.checks() if not c.ok]
            if missing:
                log.warning(
                    "ISOLATION REDUCED: the linux sandbox runs %s without: %s. "
                    "`gureum doctor` shows each check.",
                    why,
                    "; ".join(missing),
                )
            return sandbox
        if settings.sandbox == "linux":
            raise ConfigurationError(f"the linux sandbox is not available on this host: {why}")
        log.warning(
            "ISOLATION REDUCED: the linux sandbox is not available (%s); functions run as "
            "plain processes without namespaces, cgroups or seccomp. `gureum doctor` shows "
            "each missing protection.",
            why,
        )
    libraries = prepare_runtime_libraries(settings.data_dir / "runtime" / "python")
    return ProcessSandbox([libraries])


@dataclass
class Platform:
    settings: Settings
    db: Database
    root: RootCredentials
    root_created: bool
    keyring: KeyRing
    sessions: SessionIssuer
    packages: PackageStore
    registry: Registry
    sandbox: Sandbox
    pool: InstancePool
    recorder: InvocationRecorder
    dispatcher: Dispatcher
    async_invoker: EventJournal
    lock: TextIO
    closed: bool = False
    # queues, mappings, schedules, topics: built once the async invoker runs
    events: EventHub = field(init=False)
    # API gateway: HTTP APIs, routes, API keys (kept in memory)
    routes: RouteStore = field(init=False)
    package_sweeper: PackageSweeper = field(init=False)

    @classmethod
    async def open(cls, settings: Settings) -> Platform:
        """Build, migrate and start everything; raise ConfigurationError on bad set-up."""
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock_data_dir(settings.data_dir)
        try:
            return await cls._open_locked(settings, lock)
        except BaseException:
            lock.close()
            raise

    @classmethod
    async def _open_locked(cls, settings: Settings, lock: TextIO) -> Platform:
        root, created = load_or_create_root(
            settings.data_dir,
            access_key_id=settings.root_access_key_id,
            secret_access_key=settings.root_secret_access_key,
        )
        sessions = SessionIssuer.load_or_create(settings.data_dir)
        db = await Database.open(settings.resolved_database_url)
        try:
            return await cls._assemble(settings, lock, db, root, created, sessions)
        except BaseException:
            await db.close()
            raise

    @classmethod
    async def _assemble(
        cls,
        settings: Settings,
        lock: TextIO,
        db: Database,
        root: RootCredentials,
        created: bool,
        sessions: SessionIssuer,
    ) -> Platform:
        try:
            async with db.engine.begin() as conn:
                exists = await conn.scalar(
                    sa.select(sa.func.count()).where(accounts.c.id == root.account_id)
                )
                if not exists:
                    await conn.execute(
                        accounts.insert().values(
                            id=root.account_id, name="root", created_at=time.time()
                        )
                    )
        except IntegrityError:
            pass  # another node created it first
        packages = PackageStore(settings.data_dir / "code")
        registry = Registry(db, packages, settings.region)
        sandbox = make_sandbox(settings)
        pool = InstancePool(
            sandbox,
            max_instances=settings.max_instances,
            queue_depth=settings.queue_depth,
            queue_wait_s=settings.queue_wait_s,
            keep_alive_s=settings.keep_alive_s,
        )
        recorder = InvocationRecorder(db)

        def issue(account: str, principal: str) -> tuple[str, str, str]:
            return sessions.issue(account, principal, ttl_s=FUNCTION_CREDENTIAL_TTL_S)

        dispatcher = Dispatcher(
            registry,
            pool,
            recorder,
            packages,
            issue,
            region=settings.region,
            endpoint=settings.endpoint,
            default_concurrency=settings.default_concurrency,
        )
        invoker = AsyncInvoker(
            db,
            dispatcher,
            workers=settings.async_workers,
            retry_base_s=settings.async_retry_base_s,
            poll_s=settings.async_poll_s,
            idempotency_window_s=settings.idempotency_window_s,
        )
        platform = cls(
            settings,
            db,
            root,
            created,
            KeyRing(root, sessions),
            sessions,
            packages,
            registry,
            sandbox,
            pool,
            recorder,
            dispatcher,
            invoker,
            lock,
        )
        pool.start()
        recorder.start()
        await invoker.start(sole_owner=db.dialect == "sqlite")
        platform.events = EventHub(settings, db, registry, dispatcher, invoker)
        await platform.events.start()
        platform.routes = await RouteStore.open(db, registry)
        platform.package_sweeper = PackageSweeper(packages, registry)
        await platform._provision_all()
        platform.package_sweeper.start()
        return platform

    async def _provision_all(self) -> None:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(functions.c.account_id, functions.c.name))).all()
        for row in rows:
            config = await self.registry.get_latest(row.account_id, row.name)
            if config.min_instances > 0:
                await self.dispatcher.provision(config)

    def doctor(self) -> dict[str, Any]:
        """Isolation level and each check, plus where state lives."""
        checks = self.sandbox.checks()
        return {
            "sandbox": self.sandbox.name,
            "isolation": "full" if all(c.ok for c in checks) else "partial",
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            "data_dir": str(self.settings.data_dir),
            "database": self.db.dialect,
            "endpoint": self.settings.endpoint,
            "region": self.settings.region,
            "instances": self.pool.instance_count,
        }

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.package_sweeper.close()
        await self.events.close()
        await self.async_invoker.close()
        await self.dispatcher.close()
        await self.pool.close()
        await self.recorder.close()
        await self.sandbox.close()
        await self.db.close()
        self.lock.close()
