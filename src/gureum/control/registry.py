"""The function registry: create, change, publish, alias and resolve functions.

All reads on the invocation path are served from an in-process cache that every write through
this registry keeps current; the metadata store is the source of truth on start.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gureum.control.models import (
    LATEST,
    Alias,
    FunctionConfig,
    new_revision_id,
    validate_alias_name,
    validate_description,
    validate_name,
)
from gureum.control.packages import PackageStore
from gureum.errors import (
    InvalidParameterValue,
    PreconditionFailed,
    ResourceConflict,
    ResourceNotFound,
)
from gureum.store import Database
from gureum.store.schema import aliases, functions, versions

ChangeListener = Callable[[str, str], None]


def _not_found(region: str, account: str, name: str, qualifier: str | None = None) -> Exception:
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    if qualifier:
        arn += f":{qualifier}"
    return ResourceNotFound(f"Function not found: {arn}")


def _check_revision(current: str, expected: str | None) -> None:
    if expected is not None and expected != current:
        raise PreconditionFailed(
            "The Revision Id provided does not match the latest Revision Id. "
            "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
        )


class Registry:
    """Functions, versions and aliases of every account, backed by the metadata store."""

    def __init__(self, db: Database, packages: PackageStore, region: str) -> None:
        self.db = db
        self.packages = packages
        self.region = region
        self._latest: dict[tuple[str, str], FunctionConfig] = {}
        self._versions: dict[tuple[str, str, str], FunctionConfig] = {}
        self._aliases: dict[tuple[str, str, str], Alias] = {}
        self._reserved: dict[tuple[str, str], int | None] = {}
        self._listeners: list[ChangeListener] = []
        self._lock = asyncio.Lock()  # serialises writes, so read-check-write is atomic here

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(account, name)` after any change to a function or its aliases."""
        self._listeners.append(listener)

    def _changed(self, account: str, name: str) -> None:
        for listener in self._listeners:
            listener(account, name)

    # ---- functions -------------------------------------------------------------------------

    async def create_function(
        self, config: FunctionConfig, code: bytes, *, publish: bool = False
    ) -> FunctionConfig:
        """Store the code and create the function; ResourceConflict if the name is taken.

        A taken name is refused before the code is unpacked, so a doomed request stores nothing
        (a create racing another for the same name may still leave an unused package behind).
        """
        if await self._exists(config.account_id, config.name):
            raise ResourceConflict(f"Function already exist: {config.name}")
        package = await asyncio.to_thread(self.packages.put, code)
        config = replace(
            config,
            code_sha256=package.sha256_hex,
            code_sha256_b64=package.sha256_b64,
            code_size=package.size,
            version=LATEST,
        ).validated()
        async with self._lock:
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(
                        functions.insert().values(
                            account_id=config.account_id,
                            name=config.name,
                            config=config.to_json(),
                            next_version=1,
                            created_at=time.time(),
                        )
                    )
            except IntegrityError:
                raise ResourceConflict(f"Function already exist: {config.name}") from None
            self._latest[(config.account_id, config.name)] = config
            self._reserved[(config.account_id, config.name)] = None
        if publish:
            return await self.publish_version(config.account_id, config.name)
        return config

    async def _exists(self, account: str, name: str) -> bool:
        try:
            await self.get_latest(account, name)
        except ResourceNotFound:
            return False
        return True

    def peek_latest(self, account: str, name: str) -> FunctionConfig | None:
        """$LATEST from the cache only (None if unknown or deleted); never touches the store."""
        return self._latest.get((account, name))

    def peek_version(self, account: str, name: str, version: str) -> FunctionConfig | None:
        """A published version from the cache only (None if deleted or never loaded).

        Every version that has run on this node was loaded through this registry, and deleting
        it drops it from the cache, so for a version with instances None means "deleted".
        """
        return self._versions.get((account, name, version))

    async def get_latest(self, account: str, name: str) -> FunctionConfig:
        key = (account, name)
        cached = self._latest.get(key)
        if cached is not None:
            return cached
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(functions.c.config, functions.c.reserved_concurrency).where(
                        functions.c.account_id == account, functions.c.name == name
                    )
                )
            ).first()
        if row is None:
            raise _not_found(self.region, account, name)
        config = FunctionConfig.from_json(row.config)
        self._latest[key] = config
        self._reserved[key] = row.reserved_concurrency
        return config

    async def get_function(
        self, account: str, name: str, qualifier: str | None = None
    ) -> FunctionConfig:
        """The configuration for `qualifier` ($LATEST, a version, or an alias's main version)."""
        if qualifier is None or qualifier == LATEST:
            return await self.get_latest(account, name)
        if qualifier.isdecimal():
            return await self.get_version(account, name, qualifier)
        alias = await self.get_alias(account, name, qualifier)
        return await self.get_version(account, name, alias.function_version)

    async def resolve(
        self, account: str, name: str, qualifier: str | None
    ) -> tuple[FunctionConfig, str]:
        """Pick the version an invocation runs (alias weights applied) → (config, qualifier)."""
        if qualifier is None or qualifier == LATEST or qualifier.isdecimal():
            return await self.get_function(account, name, qualifier), qualifier or LATEST
        alias = await self.get_alias(account, name, qualifier)
        chosen = alias.function_version
        if alias.routing:
            roll = random.random()
            for version, weight in alias.routing.items():
                if roll < weight:
                    chosen = version
                    break
                roll -= weight
        return await self.get_function(account, name, chosen), qualifier

    async def reserved_concurrency(self, account: str, name: str) -> int | None:
        await self.get_latest(account, name)
        return self._reserved.get((account, name))

    async def list_functions(
        self, account: str, marker: str | None, max_items: int
    ) -> tuple[list[FunctionConfig], str | None]:
        """Functions ordered by name, after `marker` (the last name of the previous page)."""
        query = (
            sa.select(functions.c.config)
            .where(functions.c.account_id == account)
            .order_by(functions.c.name)
            .limit(max_items + 1)
        )
        if marker:
            query = query.where(functions.c.name > marker)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        configs = [FunctionConfig.from_json(r.config) for r in rows[:max_items]]
        next_marker = configs[-1].name if len(rows) > max_items else None
        return configs, next_marker

    async def referenced_packages(self) -> set[str]:
        """The code packages (hex digests) any function or version of any account names."""
        found: set[str] = set()
        async with self.db.engine.connect() as conn:
            for table in (functions, versions):
                for raw in await conn.scalars(sa.select(table.c.config)):
                    found.add(FunctionConfig.from_json(raw).code_sha256)
        return found

    async def _save_latest(self, config: FunctionConfig) -> None:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                functions.update()
                .where(functions.c.account_id == config.account_id)
                .where(functions.c.name == config.name)
                .values(config=config.to_json())
            )
        if result.rowcount == 0:
            raise _not_found(self.region, config.account_id, config.name)
        self._latest[(config.account_id, config.name)] = config
        self._changed(config.account_id, config.name)

    async def update_code(
        self,
        account: str,
        name: str,
        code: bytes,
        *,
        publish: bool = False,
        revision_id: str | None = None,
    ) -> FunctionConfig:
        """Replace $LATEST's code; ResourceNotFound (before the code is stored) if there is no
        such function, PreconditionFailed if `revision_id` is not the current one."""
        await self.get_latest(account, name)
        package = await asyncio.to_thread(self.packages.put, code)
        async with self._lock:
            current = await self.get_latest(account, name)
            _check_revision(current.revision_id, revision_id)
            config = replace(
                current,
                code_sha256=package.sha256_hex,
                code_sha256_b64=package.sha256_b64,
                code_size=package.size,
                revision_id=new_revision_id(),
                last_modified=time.time(),
            )
            await self._save_latest(config)
        if publish:
            return await self.publish_version(account, name)
        return config

    async def update_configuration(
        self, account: str, name: str, changes: dict[str, Any], revision_id: str | None = None
    ) -> FunctionConfig:
        """Apply field changes (FunctionConfig field names) to $LATEST."""
        async with self._lock:
            current = await self.get_latest(account, name)
            _check_revision(current.revision_id, revision_id)
            config = replace(
                current, **changes, revision_id=new_revision_id(), last_modified=time.time()
            ).validated()
            await self._save_latest(config)
            return config

    async def set_reserved_concurrency(self, account: str, name: str, value: int | None) -> None:
        if value is not None and not 0 <= value <= 100_000:
            raise InvalidParameterValue("ReservedConcurrentExecutions must be between 0 and 100000")
        await self.get_latest(account, name)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                functions.update()
                .where(functions.c.account_id == account, functions.c.name == name)
                .values(reserved_concurrency=value)
            )
        self._reserved[(account, name)] = value
        self._changed(account, name)

    async def delete_function(self, account: str, name: str, qualifier: str | None = None) -> None:
        """Delete the function (all versions and aliases), or one published version.

        `$LATEST` as qualifier is refused, as on AWS: it only goes with the whole function.
        """
        if qualifier == LATEST:
            raise InvalidParameterValue(
                "$LATEST version cannot be deleted without deleting the function."
            )
        async with self._lock:
            await self.get_latest(account, name)
            if qualifier is not None:
                await self._delete_version(account, name, qualifier)
                return
            async with self.db.engine.begin() as conn:
                where = (aliases.c.account_id == account, aliases.c.function_name == name)
                await conn.execute(aliases.delete().where(*where))
                await conn.execute(
                    versions.delete().where(
                        versions.c.account_id == account, versions.c.function_name == name
                    )
                )
                await conn.execute(
                    functions.delete().where(
                        functions.c.account_id == account, functions.c.name == name
                    )
                )
            self._latest.pop((account, name), None)
            self._reserved.pop((account, name), None)
            self._versions = {k: v for k, v in self._versions.items() if k[:2] != (account, name)}
            self._aliases = {k: v for k, v in self._aliases.items() if k[:2] != (account, name)}
            self._changed(account, name)

    async def _delete_version(self, account: str, name: str, version: str) -> None:
        if not version.isdecimal():
            raise InvalidParameterValue("Deletion of aliases is not supported by DeleteFunction")
        await self.get_version(account, name, version)
        for alias in await self.list_aliases(account, name):
            if version == alias.function_version or version in alias.routing:
                raise ResourceConflict(
                    f"Unable to delete version because the following aliases reference it: "
                    f"[{alias.name}]"
                )
        async with self.db.engine.begin() as conn:
            await conn.execute(
                versions.delete().where(
                    versions.c.account_id == account,
                    versions.c.function_name == name,
                    versions.c.version == int(version),
                )
            )
        self._versions.pop((account, name, version), None)
        self._changed(account, name)

    # ---- versions --------------------------------------------------------------------------

    async def get_version(self, account: str, name: str, version: str) -> FunctionConfig:
        key = (account, name, version)
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        await self.get_latest(account, name)
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(versions.c.config).where(
                        versions.c.account_id == account,
                        versions.c.function_name == name,
                        versions.c.version == int(version),
                    )
                )
            ).first()
        if row is None:
            raise _not_found(self.region, account, name, version)
        config = FunctionConfig.from_json(row.config)
        self._versions[key] = config
        return config

    async def publish_version(
        self,
        account: str,
        name: str,
        *,
        description: str | None = None,
        code_sha256: str | None = None,
        revision_id: str | None = None,
    ) -> FunctionConfig:
        """Snapshot $LATEST as the next version; returns the newest version if nothing changed."""
        if description is not None:
            validate_description(description)
        async with self._lock:
            latest = await self.get_latest(account, name)
            _check_revision(latest.revision_id, revision_id)
            if code_sha256 is not None and code_sha256 != latest.code_sha256_b64:
                raise InvalidParameterValue(
                    f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in "
                    f"$LATEST ({latest.code_sha256_b64}). Please try again with the CodeSHA256 "
                    "in $LATEST."
                )
            published = await self.list_versions(account, name)
            if len(published) > 1 and latest.same_code_and_config(published[-1]):
                return published[-1]
            async with self.db.engine.begin() as conn:
                number = (
                    await conn.execute(
                        sa.select(functions.c.next_version).where(
                            functions.c.account_id == account, functions.c.name == name
                        )
                    )
                ).scalar_one()
                config = latest.published(number, description)
                await conn.execute(
                    versions.insert().values(
                        account_id=account,
                        function_name=name,
                        version=number,
                        config=config.to_json(),
                        created_at=time.time(),
                    )
                )
                await conn.execute(
                    functions.update()
                    .where(functions.c.account_id == account, functions.c.name == name)
                    .values(next_version=number + 1)
                )
            self._versions[(account, name, config.version)] = config
            return config

    async def list_versions(self, account: str, name: str) -> list[FunctionConfig]:
        """$LATEST first, then published versions in ascending order."""
        latest = await self.get_latest(account, name)
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(versions.c.config)
                    .where(versions.c.account_id == account, versions.c.function_name == name)
                    .order_by(versions.c.version)
                )
            ).all()
        return [latest, *(FunctionConfig.from_json(r.config) for r in rows)]

    # ---- aliases ---------------------------------------------------------------------------

    async def _check_alias_target(
        self, account: str, name: str, version: str, routing: dict[str, float]
    ) -> None:
        if version != LATEST:
            if not version.isdecimal():
                raise InvalidParameterValue(f"Invalid function version: {version}")
            await self.get_version(account, name, version)
        if len(routing) > 1:
            raise InvalidParameterValue("Alias routing supports at most one additional version")
        for extra, weight in routing.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise InvalidParameterValue("Alias routing weight must be a number")
            if not 0.0 <= weight <= 1.0:
                raise InvalidParameterValue("Alias routing weight must be between 0.0 and 1.0")
            if not extra.isdecimal():
                raise InvalidParameterValue(
                    "Alias routing can only point to published versions, not $LATEST"
                )
            if version == LATEST:
                raise InvalidParameterValue(
                    "Alias with a routing config must point to a published version"
                )
            if extra == version:
                raise InvalidParameterValue(
                    "Alias routing's additional version must differ from the primary version"
                )
            await self.get_version(account, name, extra)

    async def create_alias(
        self,
        account: str,
        name: str,
        alias_name: str,
        version: str,
        description: str = "",
        routing: dict[str, float] | None = None,
    ) -> Alias:
        validate_alias_name(alias_name)
        validate_description(description)
        routing = routing or {}
        async with self._lock:
            await self.get_latest(account, name)
            await self._check_alias_target(account, name, version, routing)
            alias = Alias(account, name, alias_name, version, description, routing)
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(
                        aliases.insert().values(
                            account_id=account,
                            function_name=name,
                            name=alias_name,
                            function_version=version,
                            description=description,
                            routing=json.dumps(routing),
                            revision_id=alias.revision_id,
                        )
                    )
            except IntegrityError:
                raise ResourceConflict(f"Alias already exists: {alias.arn(self.region)}") from None
            self._aliases[(account, name, alias_name)] = alias
        self._changed(account, name)
        return alias

    async def get_alias(self, account: str, name: str, alias_name: str) -> Alias:
        key = (account, name, alias_name)
        cached = self._aliases.get(key)
        if cached is not None:
            return cached
        await self.get_latest(account, name)
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(aliases).where(
                        aliases.c.account_id == account,
                        aliases.c.function_name == name,
                        aliases.c.name == alias_name,
                    )
                )
            ).first()
        if row is None:
            raise ResourceNotFound(
                f"Cannot find alias arn: arn:aws:lambda:{self.region}:{account}:function:"
                f"{name}:{alias_name}"
            )
        alias = Alias(
            account,
            name,
            alias_name,
            row.function_version,
            row.description,
            json.loads(row.routing),
            row.revision_id,
        )
        self._aliases[key] = alias
        return alias

    async def list_aliases(self, account: str, name: str) -> list[Alias]:
        await self.get_latest(account, name)
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(aliases.c.name)
                    .where(aliases.c.account_id == account, aliases.c.function_name == name)
                    .order_by(aliases.c.name)
                )
            ).all()
        return [await self.get_alias(account, name, r.name) for r in rows]

    async def update_alias(
        self,
        account: str,
        name: str,
        alias_name: str,
        *,
        version: str | None = None,
        description: str | None = None,
        routing: dict[str, float] | None = None,
        revision_id: str | None = None,
    ) -> Alias:
        if description is not None:
            validate_description(description)
        async with self._lock:
            current = await self.get_alias(account, name, alias_name)
            _check_revision(current.revision_id, revision_id)
            alias = replace(
                current,
                function_version=current.function_version if version is None else version,
                description=current.description if description is None else description,
                routing=current.routing if routing is None else routing,
                revision_id=new_revision_id(),
            )
            await self._check_alias_target(account, name, alias.function_version, alias.routing)
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    aliases.update()
                    .where(
                        aliases.c.account_id == account,
                        aliases.c.function_name == name,
                        aliases.c.name == alias_name,
                    )
                    .values(
                        function_version=alias.function_version,
                        description=alias.description,
                        routing=json.dumps(alias.routing),
                        revision_id=alias.revision_id,
                    )
                )
            self._aliases[(account, name, alias_name)] = alias
        self._changed(account, name)
        return alias

    async def delete_alias(self, account: str, name: str, alias_name: str) -> None:
        async with self._lock:
            await self.get_alias(account, name, alias_name)
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    aliases.delete().where(
                        aliases.c.account_id == account,
                        aliases.c.function_name == name,
                        aliases.c.name == alias_name,
                    )
                )
            self._aliases.pop((account, name, alias_name), None)
        self._changed(account, name)


__all__ = ["LATEST", "Registry", "validate_name"]
