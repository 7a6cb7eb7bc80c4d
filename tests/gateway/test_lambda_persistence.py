"""Lambda API, persistence: functions, versions, aliases and settings survive a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lambda_testkit import ROLE, info_zip, payload_of


def test_everything_survives_a_restart(server_factory: Callable[..., Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "persistent"
    first = server_factory(data_dir=data_dir)
    lam = first.client("lambda")
    created = lam.create_function(
        FunctionName="durable",
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": info_zip("one")},
        Environment={"Variables": {"COLOR": "red"}},
        MemorySize=256,
    )
    v1 = lam.publish_version(FunctionName="durable", Description="first")
    lam.update_function_code(FunctionName="durable", ZipFile=info_zip("two"))
    v2 = lam.publish_version(FunctionName="durable")
    alias = lam.create_alias(
        FunctionName="durable",
        Name="live",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}},
    )
    lam.create_alias(FunctionName="durable", Name="stable", FunctionVersion="1")
    lam.put_function_concurrency(FunctionName="durable", ReservedConcurrentExecutions=7)
    lam.update_function_code(FunctionName="durable", ZipFile=info_zip("three"))
    latest = lam.get_function_configuration(FunctionName="durable")
    keys = (first.platform.root.access_key_id, first.platform.root.secret_access_key)
    lam.close()
    first.stop()

    second = server_factory(data_dir=data_dir)
    assert (second.platform.root.access_key_id, second.platform.root.secret_access_key) == keys
    lam = second.client("lambda")
    try:
        config = lam.get_function_configuration(FunctionName="durable")
        for key in ("CodeSha256", "RevisionId", "MemorySize", "Environment", "LastModified"):
            assert config[key] == latest[key], key
        assert config["FunctionArn"] == created["FunctionArn"]

        versions = lam.list_versions_by_function(FunctionName="durable")["Versions"]
        assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]
        assert versions[1]["CodeSha256"] == v1["CodeSha256"]
        assert versions[1]["Description"] == "first"
        assert versions[2]["CodeSha256"] == v2["CodeSha256"]

        got = lam.get_alias(FunctionName="durable", Name="live")
        assert got["FunctionVersion"] == "1"
        assert got["RevisionId"] == alias["RevisionId"]
        assert got["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.5}}
        names = [a["Name"] for a in lam.list_aliases(FunctionName="durable")["Aliases"]]
        assert names == ["live", "stable"]
        assert lam.get_function(FunctionName="durable")["Concurrency"] == {
            "ReservedConcurrentExecutions": 7
        }

        event = b'{"env": ["COLOR"]}'
        latest_run = payload_of(lam.invoke(FunctionName="durable", Payload=event))
        assert (latest_run["tag"], latest_run["env"], latest_run["memory"]) == (
            "three",
            {"COLOR": "red"},
            "256",
        )
        assert payload_of(lam.invoke(FunctionName="durable", Qualifier="1"))["tag"] == "one"
        assert payload_of(lam.invoke(FunctionName="durable:2"))["tag"] == "two"
        assert payload_of(lam.invoke(FunctionName="durable:stable"))["tag"] == "one"
        executed = {lam.invoke(FunctionName="durable:live")["ExecutedVersion"] for _ in range(30)}
        assert executed == {"1", "2"}  # P(miss one) = 2 * 0.5**30

        # the numbering continues where it stopped
        assert lam.publish_version(FunctionName="durable")["Version"] == "3"
    finally:
        lam.close()
