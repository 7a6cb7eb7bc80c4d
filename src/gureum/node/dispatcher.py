"""`Dispatcher.invoke()`: resolve the function, admit, run on an instance, record."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from gureum.control.models import FunctionConfig
from gureum.control.packages import PackageStore
from gureum.control.registry import Registry
from gureum.errors import ResourceNotFound, SandboxError
from gureum.node.pool import InstancePool, VersionKey
from gureum.node.records import (
    InvocationLog,
    InvocationRecord,
    InvocationRecorder,
    new_request_id,
)
from gureum.sandbox.base import InstanceSpec
from gureum.sandbox.instance import InitFailed, InvokeOutcome

log = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
MAX_CACHED_PACKAGES = 4096
# (account, principal) -> (access key id, secret, session token)
CredentialIssuer = Callable[[str, str], tuple[str, str, str]]


class InvocationResult(NamedTuple):
    """What an invoker gets back: the payload, and whether it is a function error."""

    request_id: str
    executed_version: str
    payload: bytes
    function_error: str | None  # "Unhandled" when payload is an error document
    status: str
    transcript: InvocationLog

    @property
    def log(self) -> str:
        """The invocation's log (START … REPORT), composed on first use."""
        return self.transcript.text


class Dispatcher:
    """Runs invocations on the node's instance pool and records each one."""

    def __init__(
        self,
        registry: Registry,
        pool: InstancePool,
        recorder: InvocationRecorder,
        packages: PackageStore,
        issue_credentials: CredentialIssuer,
        *,
        region: str,
        endpoint: str,
        default_concurrency: int,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.recorder = recorder
        self.packages = packages
        self.issue_credentials = issue_credentials
        self.region = region
        self.endpoint = endpoint
        self.default_concurrency = default_concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        # code sha256 -> extracted tree. Packages are content-addressed and immutable, so a
        # warm invoke need not look at the store; every instance start still checks it.
        self._package_paths: dict[str, Path] = {}
        registry.on_change(self._function_changed)

    def _function_changed(self, account: str, name: str) -> None:
        latest = self.registry.peek_latest(account, name)

        def current(key: VersionKey) -> bool:
            if latest is None:
                return False  # the function is gone
            if key[2] == "$LATEST":
                return key[3] == latest.revision_id
            return self.registry.peek_version(account, name, key[2]) is not None

        self.pool.retire(account, name, current)
        if latest is not None and latest.min_instances > 0:
            self._background(self.provision(latest))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def provision(self, config: FunctionConfig) -> None:
        """Keep `config.min_instances` instances of this version warm."""
        key: VersionKey = (config.account_id, config.name, config.version, config.revision_id)
        await self.pool.prewarm(key, config.min_instances, lambda: self._spec(config))

    def _package_path(self, config: FunctionConfig) -> Path:
        """The code package's tree, checked against the store; SandboxError when it is gone."""
        try:
            path = self.packages.get(config.code_sha256).path
        except ResourceNotFound:
            self._package_paths.pop(config.code_sha256, None)
            raise SandboxError(f"code package of {config.name} is missing from the store") from None
        if len(self._package_paths) >= MAX_CACHED_PACKAGES:
            self._package_paths.clear()
        self._package_paths[config.code_sha256] = path
        return path

    def _spec(self, config: FunctionConfig, provisioned: bool = False) -> InstanceSpec:
        code_dir = self._package_path(config)
        access_key, secret, token = self.issue_credentials(
            config.account_id, f"function:{config.name}"
        )
        today = datetime.now(UTC).strftime("%Y/%m/%d")
        env = {
            # defaults a function may override, as on AWS; reserved keys are refused at deploy
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            **config.environment,
            "_HANDLER": config.handler,
            "AWS_LAMBDA_FUNCTION_NAME": config.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": config.version,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "provisioned-concurrency"
            if provisioned
            else "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[{config.version}]{uuid.uuid4().hex}",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{config.runtime}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_SESSION_TOKEN": token,
            "LAMBDA_TASK_ROOT": str(code_dir),
            "LAMBDA_RUNTIME_DIR": str(Path(__file__).resolve().parent.parent / "runtime"),
        }
        return InstanceSpec(
            function_name=config.name,
            version=config.version,
            code_dir=code_dir,
            handler=config.handler,
            memory_mb=config.memory_mb,
            timeout_s=float(config.timeout_s),
            env=env,
            ephemeral_mb=config.ephemeral_mb,
            network=config.network,
            egress_allow=tuple(config.egress_allow),
        )

    async def invoke(
        self,
        account: str,
        name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        trigger: str = "sync",
        request_id: str | None = None,
        client_context: dict[str, object] | None = None,
    ) -> InvocationResult:
        """Run one invocation and wait for it. Function faults come back in the result;
        ResourceNotFound / TooManyRequests / SandboxError are raised."""
        request_id = request_id or new_request_id()
        admitted = time.time()
        config, invoked_as = await self.registry.resolve(account, name, qualifier)
        reserved = await self.registry.reserved_concurrency(account, name)
        limit = self.default_concurrency if reserved is None else reserved
        key: VersionKey = (account, name, config.version, config.revision_id)
        if config.code_sha256 not in self._package_paths:
            self._package_path(config)
        arn = config.arn(self.region, None if qualifier is None else invoked_as)
        lease = None
        try:
            lease = await self.pool.acquire(
                key, limit, lambda: self._spec(config), config.min_instances
            )
            try:
                outcome = await lease.instance.invoke(
                    request_id,
                    payload,
                    invoked_arn=arn,
                    timeout_s=float(config.timeout_s),
                    client_context=client_context,
                )
            finally:
                await self.pool.release(lease)
        except InitFailed as exc:
            error = {**exc.error, "requestId": request_id}
            outcome = InvokeOutcome(
                "init_error",
                json.dumps(error).encode(),
                str(error.get("errorType")),
                exc.log,
                0.0,
                0,
            )
            queue_ms = 0.0 if lease is None else lease.queue_ms
            return self._finish(
                config, request_id, trigger, admitted, queue_ms, exc.init_ms, True, outcome, b""
            )
        instance = lease.instance
        if outcome.status == "success" and len(outcome.payload) > MAX_RESPONSE_BYTES:
            message = (
                f"Response payload size ({len(outcome.payload)} bytes) exceeded maximum "
                f"allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
            )
            error = {
                "errorMessage": message,
                "errorType": "Function.ResponseSizeTooLarge",
                "requestId": request_id,
                "stackTrace": [],
            }
            outcome = InvokeOutcome(
                "error",
                json.dumps(error).encode(),
                "Function.ResponseSizeTooLarge",
                outcome.log,
                outcome.run_ms,
                outcome.max_rss_kb,
            )
        return self._finish(
            config,
            request_id,
            trigger,
            admitted,
            lease.queue_ms,
            instance.init_ms if lease.cold else 0.0,
            lease.cold,
            outcome,
            instance.init_log if lease.cold else b"",
        )

    def _finish(
        self,
        config: FunctionConfig,
        request_id: str,
        trigger: str,
        admitted: float,
        queue_ms: float,
        init_ms: float,
        cold: bool,
        outcome: InvokeOutcome,
        init_log: bytes,
    ) -> InvocationResult:
        billed = InvocationRecord.billed(outcome.run_ms, init_ms)
        max_memory_mb = max(1, outcome.max_rss_kb // 1024) if outcome.max_rss_kb else 0
        memory_mb = config.memory_mb
        transcript = InvocationLog(
            request_id,
            config.version,
            init_log,
            outcome.log,
            run_ms=outcome.run_ms,
            billed_ms=billed,
            memory_mb=memory_mb,
            max_memory_mb=max_memory_mb,
            init_ms=init_ms,
            cold=cold,
        )
        self.recorder.add(
            InvocationRecord(
                request_id=request_id,
                account_id=config.account_id,
                function_name=config.name,
                version=config.version,
                trigger=trigger,
                started_at=admitted,
                ended_at=time.time(),
                queue_ms=queue_ms,
                init_ms=init_ms,
                run_ms=outcome.run_ms,
                billed_ms=billed,
                memory_mb=memory_mb,
                max_memory_mb=max_memory_mb,
                gb_seconds=billed / 1000 * memory_mb / 1024,
                cold=cold,
                status=outcome.status,
                error_type=outcome.error_type,
                log=transcript,
            )
        )
        return InvocationResult(
            request_id=request_id,
            executed_version=config.version,
            payload=outcome.payload,
            function_error=None if outcome.status == "success" else "Unhandled",
            status=outcome.status,
            transcript=transcript,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
