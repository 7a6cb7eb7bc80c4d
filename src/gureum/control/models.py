"""Function, version and alias records, their validation, and their AWS API shapes."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gureum.errors import InvalidParameterValue, ResourceNotFound

LATEST = "$LATEST"
NETWORK_MODES = ("none", "platform", "internet")
HOST_PATTERN_RE = re.compile(r"^(\*\.)?[A-Za-z0-9._-]{1,253}(:[0-9]{1,5})?$|^\[?[0-9a-fA-F:]+\]?$")
RUNTIMES = ("python3.9", "python3.10", "python3.11", "python3.12", "python3.13", "python3.14")
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ALIAS_RE = re.compile(r"^(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}$")
HANDLER_RE = re.compile(r"^[^\s]{1,128}$")
DEAD_LETTER_ARN_RE = re.compile(r"arn:aws:(sqs|sns):[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}")
ENV_KEY_RE = re.compile(r"^[a-zA-Z]([a-zA-Z0-9_])+$")
ENV_LIMIT_BYTES = 4096
# Variables the platform sets for every instance; users may not override them (as on AWS).
RESERVED_ENV = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


def _constraint(value: object, field_name: str, rule: str) -> InvalidParameterValue:
    return InvalidParameterValue(
        f"1 validation error detected: Value '{value}' at '{field_name}' failed to satisfy "
        f"constraint: {rule}"
    )


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _constraint(
            name,
            "functionName",
            "Member must satisfy regular expression pattern: [a-zA-Z0-9-_]{1,64}",
        )
    return name


def validate_alias_name(name: str) -> str:
    if not isinstance(name, str) or not ALIAS_RE.match(name):
        raise _constraint(
            name,
            "name",
            "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)",
        )
    return name


def validate_description(description: object) -> str:
    """A function, version or alias description: a string of at most 256 characters."""
    if not isinstance(description, str) or len(description) > 256:
        raise _constraint(
            description, "description", "Member must have length less than or equal to 256"
        )
    return description


def _int_in(value: object, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _constraint(value, field_name, f"Member must have value between {low} and {high}")
    return value


def validate_environment(env: object) -> dict[str, str]:
    if not isinstance(env, dict):
        raise InvalidParameterValue("Environment.Variables must be a map of strings")
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise InvalidParameterValue(
                f"Environment variable name {key!r} is invalid: it must "
                "match [a-zA-Z]([a-zA-Z0-9_])+"
            )
        if not isinstance(value, str):
            raise InvalidParameterValue(f"Environment variable {key} must be a string")
    reserved = sorted(set(env) & RESERVED_ENV)
    if reserved:
        raise InvalidParameterValue(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided contains reserved keys that are currently not supported "
            f"for modification. Reserved keys used in this request: {', '.join(reserved)}"
        )
    # Measured in UTF-8 bytes: escaping non-ASCII as \uXXXX would count a Hangul letter as 6.
    if len(json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()) > ENV_LIMIT_BYTES:
        raise InvalidParameterValue(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided exceeded the 4KB limit."
        )
    return dict(env)


def new_revision_id() -> str:
    import uuid

    return str(uuid.uuid4())


def format_time(ts: float) -> str:
    """AWS Lambda's LastModified format: 2019-08-14T22:26:11.234+0000."""
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}+0000"


@dataclass(frozen=True)
class FunctionConfig:
    """One function version's configuration ($LATEST or a published number)."""

    account_id: str
    name: str
    handler: str
    code_sha256: str  # hex
    code_sha256_b64: str
    code_size: int
    runtime: str = "python3.11"
    memory_mb: int = 128
    timeout_s: int = 3
    environment: dict[str, str] = field(default_factory=dict)
    description: str = ""
    role: str = ""
    ephemeral_mb: int = 512
    min_instances: int = 0
    network: str = "platform"  # "none" | "platform" (Gureum's APIs) | "internet" (+ egress)
    egress_allow: list[str] = field(default_factory=list)  # internet: allowed hosts
    dead_letter_target: str = ""  # DeadLetterConfig.TargetArn: an SQS queue or SNS topic
    version: str = LATEST
    revision_id: str = field(default_factory=new_revision_id)
    last_modified: float = field(default_factory=time.time)

    def validated(self) -> FunctionConfig:
        """Return self if every field is within AWS's limits, else raise InvalidParameterValue."""
        validate_name(self.name)
        if self.runtime not in RUNTIMES:
            raise _constraint(
                self.runtime,
                "runtime",
                f"Member must satisfy enum value set: [{', '.join(RUNTIMES)}]",
            )
        if not isinstance(self.handler, str) or not HANDLER_RE.match(self.handler):
            raise _constraint(
                self.handler,
                "handler",
                "Member must satisfy regular expression pattern: [^\\s]+ and have length <= 128",
            )
        _int_in(self.memory_mb, "memorySize", 128, 10240)
        _int_in(self.timeout_s, "timeout", 1, 900)
        _int_in(self.ephemeral_mb, "ephemeralStorage.size", 512, 10240)
        _int_in(self.min_instances, "minInstances", 0, 1000)
        if self.network not in NETWORK_MODES:
            raise _constraint(self.network, "network", f"Member must be one of {NETWORK_MODES}")
        if not isinstance(self.egress_allow, list) or len(self.egress_allow) > 100:
            raise InvalidParameterValue("egress_allow must be a list of at most 100 hosts")
        for host in self.egress_allow:
            if not isinstance(host, str) or not HOST_PATTERN_RE.match(host):
                raise _constraint(
                    host,
                    "egressAllow",
                    "Member must be a host name, "
                    "*.suffix pattern or IP address, optionally with :port",
                )
        validate_environment(self.environment)
        validate_description(self.description)
        if not isinstance(self.role, str) or len(self.role) > 2048:
            raise _constraint(self.role, "role", "Member must have length <= 2048")
        if not isinstance(self.dead_letter_target, str) or (
            self.dead_letter_target and not DEAD_LETTER_ARN_RE.fullmatch(self.dead_letter_target)
        ):
            raise _constraint(
                self.dead_letter_target,
                "deadLetterConfig.targetArn",
                "Member must be the ARN of an SQS queue or an SNS topic",
            )
        return self

    def arn(self, region: str, qualifier: str | None = None) -> str:
        base = f"arn:aws:lambda:{region}:{self.account_id}:function:{self.name}"
        return f"{base}:{qualifier}" if qualifier else base

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> FunctionConfig:
        return cls(**json.loads(raw))

    def published(self, version: int, description: str | None) -> FunctionConfig:
        """This configuration frozen as `version`; InvalidParameterValue for a bad description."""
        if description is not None:
            validate_description(description)
        return replace(
            self,
            version=str(version),
            description=self.description if description is None else description,
            revision_id=new_revision_id(),
            last_modified=time.time(),
        )

    def same_code_and_config(self, other: FunctionConfig) -> bool:
        """True when publishing `self` would produce nothing new over version `other`."""
        ignore = {"version", "revision_id", "last_modified", "description"}
        mine = {k: v for k, v in asdict(self).items() if k not in ignore}
        theirs = {k: v for k, v in asdict(other).items() if k not in ignore}
        return mine == theirs

    def to_aws(self, region: str) -> dict[str, Any]:
        """The FunctionConfiguration shape of AWS's Lambda API."""
        qualified = None if self.version == LATEST else self.version
        shape: dict[str, Any] = {
            "FunctionName": self.name,
            "FunctionArn": self.arn(region, qualified),
            "Runtime": self.runtime,
            "Role": self.role or f"arn:aws:iam::{self.account_id}:role/gureum-default",
            "Handler": self.handler,
            "CodeSize": self.code_size,
            "Description": self.description,
            "Timeout": self.timeout_s,
            "MemorySize": self.memory_mb,
            "LastModified": format_time(self.last_modified),
            "CodeSha256": self.code_sha256_b64,
            "Version": self.version,
            "Environment": {"Variables": dict(self.environment)},
            "TracingConfig": {"Mode": "PassThrough"},
            "RevisionId": self.revision_id,
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": ["x86_64"],
            "EphemeralStorage": {"Size": self.ephemeral_mb},
        }
        if self.dead_letter_target:
            shape["DeadLetterConfig"] = {"TargetArn": self.dead_letter_target}
        return shape


@dataclass(frozen=True)
class Alias:
    """A named pointer to a version, optionally splitting traffic with a second version."""

    account_id: str
    function_name: str
    name: str
    function_version: str
    description: str = ""
    routing: dict[str, float] = field(default_factory=dict)
    revision_id: str = field(default_factory=new_revision_id)

    def arn(self, region: str) -> str:
        return (
            f"arn:aws:lambda:{region}:{self.account_id}:function:{self.function_name}:{self.name}"
        )

    def to_aws(self, region: str) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "AliasArn": self.arn(region),
            "Name": self.name,
            "FunctionVersion": self.function_version,
            "Description": self.description,
            "RevisionId": self.revision_id,
        }
        if self.routing:
            shape["RoutingConfig"] = {"AdditionalVersionWeights": dict(self.routing)}
        return shape


def parse_function_ref(ref: str, region: str | None = None) -> tuple[str, str | None, str | None]:
    """Split a FunctionName as AWS accepts it into (name, qualifier, account).

    Forms: `name`, `name:qualifier`, `123456789012:function:name[:qualifier]`,
    `arn:aws:lambda:region:123456789012:function:name[:qualifier]`. With `region` (the
    endpoint's), an ARN of another region is refused as AWS refuses it.
    """
    parts = ref.split(":")
    account: str | None = None
    if parts[0] == "arn":
        if len(parts) not in (7, 8) or parts[2] != "lambda" or parts[5] != "function":
            raise InvalidParameterValue(f"Invalid function ARN: {ref}")
        if region is not None and parts[3] != region:
            raise ResourceNotFound(
                f"Functions from '{parts[3]}' are not reachable in this region ('{region}')"
            )
        account, parts = parts[4], parts[6:]
    elif len(parts) >= 3 and parts[1] == "function":
        account, parts = parts[0], parts[2:]
    if len(parts) > 2:
        raise InvalidParameterValue(f"Invalid function name: {ref}")
    validate_name(parts[0])
    return parts[0], (parts[1] if len(parts) == 2 else None), account
