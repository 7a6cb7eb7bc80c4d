"""Lambda API, function lifecycle: create, get, list, update code and configuration, delete."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from lambda_testkit import ROLE, Deploy, build_zip, error_of, info_zip, payload_of, wait_until

LAST_MODIFIED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _arn(server: Any, name: str, qualifier: str | None = None) -> str:
    account = server.platform.root.account_id
    arn = f"arn:aws:lambda:{server.settings.region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_create_function_returns_aws_shape(server: Any, lam: Any, echo_zip: bytes) -> None:
    created = lam.create_function(
        FunctionName="shape",
        Runtime="python3.12",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": echo_zip},
        Description="says hello",
        MemorySize=256,
        Timeout=7,
        Environment={"Variables": {"GREETING": "hi"}},
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["FunctionName"] == "shape"
    assert created["FunctionArn"] == _arn(server, "shape")
    assert created["CodeSha256"] == base64.b64encode(hashlib.sha256(echo_zip).digest()).decode()
    assert created["CodeSize"] == len(echo_zip)
    assert created["Version"] == "$LATEST"
    assert UUID.match(created["RevisionId"])
    assert LAST_MODIFIED.match(created["LastModified"])
    assert created["Runtime"] == "python3.12"
    assert created["Handler"] == "app.handler"
    assert created["Role"] == ROLE
    assert created["Description"] == "says hello"
    assert (created["MemorySize"], created["Timeout"]) == (256, 7)
    assert created["Environment"] == {"Variables": {"GREETING": "hi"}}
    assert created["State"] == "Active"
    assert created["LastUpdateStatus"] == "Successful"
    assert created["PackageType"] == "Zip"


def test_create_function_defaults(deploy: Deploy) -> None:
    created = deploy("defaults")
    assert (created["MemorySize"], created["Timeout"]) == (128, 3)
    assert created["EphemeralStorage"] == {"Size": 512}


def test_create_duplicate_is_a_conflict_and_changes_nothing(
    server: Any, lam: Any, deploy: Deploy
) -> None:
    first = deploy("twice")
    packages_before = sorted(p.name for p in server.platform.packages.root.iterdir())
    with pytest.raises(ClientError) as excinfo:
        deploy("twice", code=info_zip("other"))
    assert error_of(excinfo) == ("ResourceConflictException", 409)
    config = lam.get_function_configuration(FunctionName="twice")
    assert config["CodeSha256"] == first["CodeSha256"]
    assert config["RevisionId"] == first["RevisionId"]
    packages_after = sorted(p.name for p in server.platform.packages.root.iterdir())
    assert packages_after == packages_before


def test_create_with_publish_makes_version_one(lam: Any, deploy: Deploy) -> None:
    created = deploy("published", Publish=True)
    assert created["Version"] == "1"
    assert created["FunctionArn"].endswith(":published:1")
    versions = lam.list_versions_by_function(FunctionName="published")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]


def test_get_function_has_configuration_and_concurrency(lam: Any, deploy: Deploy) -> None:
    created = deploy("getme")
    got = lam.get_function(FunctionName="getme")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    created.pop("ResponseMetadata")
    assert got["Configuration"] == created
    assert got["Code"]["RepositoryType"] == "S3"
    assert "Concurrency" not in got

    lam.put_function_concurrency(FunctionName="getme", ReservedConcurrentExecutions=3)
    got = lam.get_function(FunctionName="getme")
    assert got["Concurrency"] == {"ReservedConcurrentExecutions": 3}
    lam.delete_function_concurrency(FunctionName="getme")
    assert "Concurrency" not in lam.get_function(FunctionName="getme")


def test_get_function_code_location_downloads_the_zip(
    server: Any, lam: Any, deploy: Deploy, echo_zip: bytes
) -> None:
    newer = info_zip("newer")
    deploy("download", Publish=True)
    lam.update_function_code(FunctionName="download", ZipFile=newer)
    for qualifier, expected in ((None, newer), ("1", echo_zip)):
        extra = {"Qualifier": qualifier} if qualifier else {}
        location = lam.get_function(FunctionName="download", **extra)["Code"]["Location"]
        assert location.startswith(server.endpoint + "/")
        assert "X-Amz-Signature=" in location  # presigned, like AWS's S3 URL
        downloaded = httpx.get(location, timeout=10)  # a plain GET, no credentials
        assert downloaded.status_code == 200
        assert downloaded.content == expected


def test_get_function_configuration_with_qualifier(server: Any, lam: Any, deploy: Deploy) -> None:
    first = deploy("quals", code=info_zip("one"))
    lam.publish_version(FunctionName="quals")
    lam.create_alias(FunctionName="quals", Name="live", FunctionVersion="1")
    updated = lam.update_function_code(FunctionName="quals", ZipFile=info_zip("two"))
    assert updated["CodeSha256"] != first["CodeSha256"]

    latest = lam.get_function_configuration(FunctionName="quals")
    assert latest["CodeSha256"] == updated["CodeSha256"]
    assert latest["Version"] == "$LATEST"
    explicit = lam.get_function_configuration(FunctionName="quals", Qualifier="$LATEST")
    assert explicit["CodeSha256"] == updated["CodeSha256"]

    v1 = lam.get_function_configuration(FunctionName="quals", Qualifier="1")
    assert (v1["Version"], v1["CodeSha256"]) == ("1", first["CodeSha256"])
    assert v1["FunctionArn"] == _arn(server, "quals", "1")
    assert lam.get_function_configuration(FunctionName="quals:1")["Version"] == "1"
    got_v1 = lam.get_function(FunctionName="quals", Qualifier="1")["Configuration"]
    assert got_v1["CodeSha256"] == first["CodeSha256"]
    by_alias = lam.get_function_configuration(FunctionName="quals", Qualifier="live")
    assert (by_alias["Version"], by_alias["CodeSha256"]) == ("1", first["CodeSha256"])

    for qualifier in ("7", "nosuchalias"):
        with pytest.raises(ClientError) as excinfo:
            lam.get_function_configuration(FunctionName="quals", Qualifier=qualifier)
        assert error_of(excinfo) == ("ResourceNotFoundException", 404)


def test_function_arns_of_this_region_work_and_of_another_are_refused(
    server: Any, lam: Any, deploy: Deploy
) -> None:
    deploy("regional")
    arn = _arn(server, "regional")
    assert lam.get_function_configuration(FunctionName=arn)["FunctionName"] == "regional"
    assert lam.invoke(FunctionName=arn)["StatusCode"] == 200
    elsewhere = arn.replace(f":{server.settings.region}:", ":eu-north-1:")
    for call in (lam.get_function_configuration, lam.invoke):
        with pytest.raises(ClientError) as excinfo:
            call(FunctionName=elsewhere)
        assert error_of(excinfo) == ("ResourceNotFoundException", 404)
        message = excinfo.value.response["Error"]["Message"]
        region = server.settings.region
        assert (
            message == f"Functions from 'eu-north-1' are not reachable in this region ('{region}')"
        )


def test_list_functions_paginates_without_duplicates(lam: Any, deploy: Deploy) -> None:
    names = [f"fn-{i}" for i in range(5)]
    for name in names:
        deploy(name)
    first = lam.list_functions(MaxItems=2)
    assert len(first["Functions"]) == 2
    assert first["NextMarker"]
    second = lam.list_functions(MaxItems=2, Marker=first["NextMarker"])
    assert len(second["Functions"]) == 2
    assert not {f["FunctionName"] for f in first["Functions"]} & {
        f["FunctionName"] for f in second["Functions"]
    }

    pages = list(lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["Functions"]) for p in pages] == [2, 2, 1]
    assert "NextMarker" not in pages[-1]
    collected = [f["FunctionName"] for p in pages for f in p["Functions"]]
    assert sorted(collected) == names
    assert len(collected) == len(set(collected))

    everything = lam.list_functions()
    assert sorted(f["FunctionName"] for f in everything["Functions"]) == names
    assert "NextMarker" not in everything


def test_list_functions_all_versions(lam: Any, deploy: Deploy) -> None:
    deploy("plain")
    deploy("versioned", code=info_zip("a"), Publish=True)
    lam.update_function_code(FunctionName="versioned", ZipFile=info_zip("b"), Publish=True)

    latest_only = lam.list_functions()["Functions"]
    assert sorted((f["FunctionName"], f["Version"]) for f in latest_only) == [
        ("plain", "$LATEST"),
        ("versioned", "$LATEST"),
    ]
    every = lam.list_functions(FunctionVersion="ALL")["Functions"]
    assert sorted((f["FunctionName"], f["Version"]) for f in every) == [
        ("plain", "$LATEST"),
        ("versioned", "$LATEST"),
        ("versioned", "1"),
        ("versioned", "2"),
    ]
    pages = lam.get_paginator("list_functions").paginate(
        FunctionVersion="ALL", PaginationConfig={"PageSize": 1}
    )
    collected = [(f["FunctionName"], f["Version"]) for p in pages for f in p["Functions"]]
    assert sorted(collected) == sorted((f["FunctionName"], f["Version"]) for f in every)


def test_update_function_code_runs_new_code_and_retires_old_instances(
    server: Any, lam: Any, deploy: Deploy
) -> None:
    deploy("code", code=info_zip("old"))
    before = payload_of(lam.invoke(FunctionName="code"))
    assert before["tag"] == "old"
    again = payload_of(lam.invoke(FunctionName="code"))
    assert again["pid"] == before["pid"]  # warm reuse

    updated = lam.update_function_code(FunctionName="code", ZipFile=info_zip("new"))
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (
        updated["CodeSha256"] == base64.b64encode(hashlib.sha256(info_zip("new")).digest()).decode()
    )
    assert updated["Version"] == "$LATEST"
    after = payload_of(lam.invoke(FunctionName="code"))
    assert after["tag"] == "new"
    assert after["pid"] != before["pid"]
    wait_until(lambda: not _alive(before["pid"]), timeout_s=5)


def test_update_function_code_revision_precondition(lam: Any, deploy: Deploy) -> None:
    created = deploy("rev", code=info_zip("a"))
    with pytest.raises(ClientError) as excinfo:
        lam.update_function_code(
            FunctionName="rev", ZipFile=info_zip("b"), RevisionId="00000000-wrong"
        )
    assert error_of(excinfo) == ("PreconditionFailedException", 412)
    assert payload_of(lam.invoke(FunctionName="rev"))["tag"] == "a"

    updated = lam.update_function_code(
        FunctionName="rev", ZipFile=info_zip("b"), RevisionId=created["RevisionId"]
    )
    assert updated["RevisionId"] != created["RevisionId"]
    assert payload_of(lam.invoke(FunctionName="rev"))["tag"] == "b"
    with pytest.raises(ClientError) as excinfo:  # the old revision is stale now
        lam.update_function_code(
            FunctionName="rev", ZipFile=info_zip("c"), RevisionId=created["RevisionId"]
        )
    assert error_of(excinfo) == ("PreconditionFailedException", 412)


def test_update_function_code_with_publish(lam: Any, deploy: Deploy) -> None:
    deploy("pubcode", code=info_zip("a"))
    published = lam.update_function_code(
        FunctionName="pubcode", ZipFile=info_zip("b"), Publish=True
    )
    assert published["Version"] == "1"
    result = lam.invoke(FunctionName="pubcode", Qualifier="1")
    assert (result["ExecutedVersion"], payload_of(result)["tag"]) == ("1", "b")


def test_update_function_configuration_applies_on_next_invoke(lam: Any, deploy: Deploy) -> None:
    deploy("cfg", code=info_zip())
    event = b'{"env": ["COLOR", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]}'
    before = payload_of(lam.invoke(FunctionName="cfg", Payload=event))
    assert before["memory"] == "128"
    assert before["env"] == {"COLOR": None, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}
    assert before["remaining_ms"] <= 3000

    updated = lam.update_function_configuration(
        FunctionName="cfg",
        MemorySize=256,
        Timeout=30,
        Environment={"Variables": {"COLOR": "blue"}},
        Description="reconfigured",
    )
    assert (updated["MemorySize"], updated["Timeout"]) == (256, 30)
    assert updated["Environment"] == {"Variables": {"COLOR": "blue"}}
    assert updated["Description"] == "reconfigured"
    after = payload_of(lam.invoke(FunctionName="cfg", Payload=event))
    assert after["memory"] == "256"
    assert after["env"] == {"COLOR": "blue", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256"}
    assert 3000 < after["remaining_ms"] <= 30_000
    assert after["pid"] != before["pid"]

    cleared = lam.update_function_configuration(FunctionName="cfg", Environment={"Variables": {}})
    assert cleared["Environment"] == {"Variables": {}}
    assert payload_of(lam.invoke(FunctionName="cfg", Payload=event))["env"]["COLOR"] is None


def test_environment_limits_count_utf8_bytes(lam: Any, deploy: Deploy) -> None:
    hangul = "구름" * 600  # 3,600 bytes of UTF-8; 7,200 if escaped as \uXXXX
    deploy("korean", code=info_zip(), Environment={"Variables": {"SKY": hangul}})
    event = b'{"env": ["SKY"]}'
    assert payload_of(lam.invoke(FunctionName="korean", Payload=event))["env"] == {"SKY": hangul}
    with pytest.raises(ClientError) as excinfo:
        lam.update_function_configuration(
            FunctionName="korean", Environment={"Variables": {"SKY": hangul + "구름" * 100}}
        )
    assert error_of(excinfo) == ("InvalidParameterValueException", 400)


def test_unreserved_variables_can_be_overridden(lam: Any, deploy: Deploy) -> None:
    variables = {"TZ": "Asia/Seoul", "LANG": "ko_KR.UTF-8", "PYTHONIOENCODING": "utf-8"}
    deploy("local", code=info_zip(), Environment={"Variables": variables})
    event = json.dumps({"env": [*variables, "AWS_REGION"]}).encode()
    seen = payload_of(lam.invoke(FunctionName="local", Payload=event))["env"]
    assert seen == {**variables, "AWS_REGION": "us-east-1"}


def test_update_function_configuration_handler(lam: Any, deploy: Deploy) -> None:
    code = build_zip(
        {"a.py": "def main(e, c):\n    return 'a'\n", "b.py": "def run(e, c):\n    return 'b'\n"}
    )
    deploy("handlers", code=code, handler="a.main")
    assert payload_of(lam.invoke(FunctionName="handlers")) == "a"
    lam.update_function_configuration(FunctionName="handlers", Handler="b.run")
    assert payload_of(lam.invoke(FunctionName="handlers")) == "b"


def test_update_function_configuration_revision_and_validation(
    lam: Any, raw_lam: Any, deploy: Deploy
) -> None:
    created = deploy("cfgrev")
    with pytest.raises(ClientError) as excinfo:
        lam.update_function_configuration(FunctionName="cfgrev", Timeout=5, RevisionId="stale")
    assert error_of(excinfo) == ("PreconditionFailedException", 412)
    with pytest.raises(ClientError) as excinfo:
        raw_lam.update_function_configuration(FunctionName="cfgrev", MemorySize=127)
    assert error_of(excinfo) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as excinfo:
        lam.update_function_configuration(FunctionName="cfgrev", Runtime="python2.7")
    assert error_of(excinfo) == ("InvalidParameterValueException", 400)
    config = lam.get_function_configuration(FunctionName="cfgrev")
    assert config["RevisionId"] == created["RevisionId"]
    assert (config["MemorySize"], config["Timeout"], config["Runtime"]) == (128, 3, "python3.11")


def test_delete_function(lam: Any, deploy: Deploy) -> None:
    deploy("doomed", Publish=True)
    lam.create_alias(FunctionName="doomed", Name="live", FunctionVersion="1")
    first = payload_of(lam.invoke(FunctionName="doomed"))
    assert first["count"] == 1
    warm_version = payload_of(lam.invoke(FunctionName="doomed:live"))["pid"]
    deleted = lam.delete_function(FunctionName="doomed")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    # its warm instances go with it
    wait_until(lambda: not _alive(first["pid"]) and not _alive(warm_version), timeout_s=5)
    for call in (
        lambda: lam.get_function(FunctionName="doomed"),
        lambda: lam.get_function_configuration(FunctionName="doomed"),
        lambda: lam.invoke(FunctionName="doomed"),
        lambda: lam.invoke(FunctionName="doomed:live"),
        lambda: lam.get_alias(FunctionName="doomed", Name="live"),
        lambda: lam.list_versions_by_function(FunctionName="doomed"),
        lambda: lam.delete_function(FunctionName="doomed"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    assert lam.list_functions()["Functions"] == []

    recreated = deploy("doomed")  # the name is free again, with fresh state
    assert recreated["Version"] == "$LATEST"
    assert payload_of(lam.invoke(FunctionName="doomed"))["count"] == 1
    assert [
        v["Version"] for v in lam.list_versions_by_function(FunctionName="doomed")["Versions"]
    ] == ["$LATEST"]


def test_delete_one_version(lam: Any, deploy: Deploy) -> None:
    deploy("trim", code=info_zip("a"), Publish=True)
    lam.update_function_code(FunctionName="trim", ZipFile=info_zip("b"), Publish=True)
    lam.create_alias(FunctionName="trim", Name="live", FunctionVersion="2")

    with pytest.raises(ClientError) as excinfo:  # an alias still points at it
        lam.delete_function(FunctionName="trim", Qualifier="2")
    assert error_of(excinfo) == ("ResourceConflictException", 409)

    warm_v1 = payload_of(lam.invoke(FunctionName="trim", Qualifier="1"))["pid"]
    deleted = lam.delete_function(FunctionName="trim", Qualifier="1")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as excinfo:
        lam.invoke(FunctionName="trim", Qualifier="1")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as excinfo:
        lam.delete_function(FunctionName="trim", Qualifier="1")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    versions = lam.list_versions_by_function(FunctionName="trim")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "2"]
    assert payload_of(lam.invoke(FunctionName="trim:live"))["tag"] == "b"
    assert payload_of(lam.invoke(FunctionName="trim"))["tag"] == "b"

    # the deleted version's warm instance is retired, not left idling until keep-alive
    wait_until(lambda: not _alive(warm_v1), timeout_s=5)

    # Version numbers are never reused, even after a deletion.
    lam.update_function_code(FunctionName="trim", ZipFile=info_zip("c"))
    assert lam.publish_version(FunctionName="trim")["Version"] == "3"
