"""Lambda API, versions and aliases: publish, list, alias CRUD, weighted routing, qualifiers."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lambda_testkit import Deploy, error_of, info_zip, payload_of


def _arn(server: Any, name: str, qualifier: str | None = None) -> str:
    account = server.platform.root.account_id
    arn = f"arn:aws:lambda:{server.settings.region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


@pytest.fixture
def two_versions(lam: Any, deploy: Deploy) -> str:
    """Function `fn` with version 1 (tag one) and version 2 (tag two); $LATEST is tag latest."""
    deploy("fn", code=info_zip("one"))
    assert lam.publish_version(FunctionName="fn")["Version"] == "1"
    lam.update_function_code(FunctionName="fn", ZipFile=info_zip("two"))
    assert lam.publish_version(FunctionName="fn")["Version"] == "2"
    lam.update_function_code(FunctionName="fn", ZipFile=info_zip("latest"))
    return "fn"


# ---- versions --------------------------------------------------------------------------------


def test_publish_version_shape_and_numbering(server: Any, lam: Any, deploy: Deploy) -> None:
    created = deploy("pub", code=info_zip("a"), Description="base")
    first = lam.publish_version(FunctionName="pub", Description="first release")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert first["Version"] == "1"
    assert first["FunctionArn"] == _arn(server, "pub", "1")
    assert first["CodeSha256"] == created["CodeSha256"]
    assert first["Description"] == "first release"
    assert first["RevisionId"] != created["RevisionId"]

    again = lam.publish_version(FunctionName="pub")  # $LATEST unchanged: same version back
    assert again["Version"] == "1"
    assert again["RevisionId"] == first["RevisionId"]
    versions = lam.list_versions_by_function(FunctionName="pub")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]

    lam.update_function_code(FunctionName="pub", ZipFile=info_zip("b"))
    second = lam.publish_version(FunctionName="pub")
    assert second["Version"] == "2"
    assert second["CodeSha256"] == base64.b64encode(hashlib.sha256(info_zip("b")).digest()).decode()
    assert lam.publish_version(FunctionName="pub")["Version"] == "2"

    lam.update_function_configuration(FunctionName="pub", MemorySize=512)
    third = lam.publish_version(FunctionName="pub")  # a configuration change is new, too
    assert (third["Version"], third["MemorySize"]) == ("3", 512)

    # the published versions are frozen: they keep running their own code
    assert payload_of(lam.invoke(FunctionName="pub", Qualifier="1"))["tag"] == "a"
    assert payload_of(lam.invoke(FunctionName="pub", Qualifier="2"))["tag"] == "b"


def test_publish_version_preconditions(lam: Any, deploy: Deploy) -> None:
    created = deploy("pubcheck")
    with pytest.raises(ClientError) as excinfo:
        lam.publish_version(FunctionName="pubcheck", CodeSha256="bm90IHRoZSBoYXNo")
    assert error_of(excinfo) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as excinfo:
        lam.publish_version(FunctionName="pubcheck", RevisionId="not-the-revision")
    assert error_of(excinfo) == ("PreconditionFailedException", 412)
    assert [
        v["Version"] for v in lam.list_versions_by_function(FunctionName="pubcheck")["Versions"]
    ] == ["$LATEST"]

    published = lam.publish_version(
        FunctionName="pubcheck",
        CodeSha256=created["CodeSha256"],
        RevisionId=created["RevisionId"],
    )
    assert published["Version"] == "1"
    with pytest.raises(ClientError) as excinfo:
        lam.publish_version(FunctionName="nosuchfunction")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)


def test_list_versions_by_function_paginates(lam: Any, deploy: Deploy) -> None:
    deploy("many", code=info_zip("0"))
    for tag in ("1", "2", "3"):
        lam.update_function_code(FunctionName="many", ZipFile=info_zip(tag), Publish=True)
    page = lam.list_versions_by_function(FunctionName="many", MaxItems=2)
    assert [v["Version"] for v in page["Versions"]] == ["$LATEST", "1"]
    assert page["NextMarker"]
    rest = lam.list_versions_by_function(FunctionName="many", MaxItems=2, Marker=page["NextMarker"])
    assert [v["Version"] for v in rest["Versions"]] == ["2", "3"]
    assert "NextMarker" not in rest

    pages = list(
        lam.get_paginator("list_versions_by_function").paginate(
            FunctionName="many", PaginationConfig={"PageSize": 1}
        )
    )
    assert [[v["Version"] for v in p["Versions"]] for p in pages] == [
        ["$LATEST"],
        ["1"],
        ["2"],
        ["3"],
    ]
    arns = [v["FunctionArn"] for p in pages for v in p["Versions"]]
    assert [a.rsplit(":", 2)[1:] for a in arns[1:]] == [["many", "1"], ["many", "2"], ["many", "3"]]


# ---- aliases ---------------------------------------------------------------------------------


def test_alias_lifecycle(server: Any, lam: Any, two_versions: str) -> None:
    created = lam.create_alias(
        FunctionName=two_versions, Name="live", FunctionVersion="1", Description="prod"
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["AliasArn"] == _arn(server, "fn", "live")
    assert (created["Name"], created["FunctionVersion"]) == ("live", "1")
    assert created["Description"] == "prod"
    assert created["RevisionId"]
    assert "RoutingConfig" not in created

    got = lam.get_alias(FunctionName="fn", Name="live")
    assert {k: got[k] for k in ("AliasArn", "Name", "FunctionVersion", "RevisionId")} == {
        k: created[k] for k in ("AliasArn", "Name", "FunctionVersion", "RevisionId")
    }

    with pytest.raises(ClientError) as excinfo:
        lam.create_alias(FunctionName="fn", Name="live", FunctionVersion="2")
    assert error_of(excinfo) == ("ResourceConflictException", 409)

    with pytest.raises(ClientError) as excinfo:
        lam.update_alias(FunctionName="fn", Name="live", FunctionVersion="2", RevisionId="stale")
    assert error_of(excinfo) == ("PreconditionFailedException", 412)
    assert payload_of(lam.invoke(FunctionName="fn", Qualifier="live"))["tag"] == "one"

    updated = lam.update_alias(
        FunctionName="fn", Name="live", FunctionVersion="2", RevisionId=created["RevisionId"]
    )
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert updated["FunctionVersion"] == "2"
    assert updated["Description"] == "prod"  # untouched fields are kept
    assert updated["RevisionId"] != created["RevisionId"]
    result = lam.invoke(FunctionName="fn", Qualifier="live")
    assert result["ExecutedVersion"] == "2"
    assert payload_of(result)["tag"] == "two"

    lam.create_alias(FunctionName="fn", Name="beta", FunctionVersion="$LATEST")
    lam.create_alias(FunctionName="fn", Name="alpha", FunctionVersion="2")
    listed = lam.list_aliases(FunctionName="fn")["Aliases"]
    assert [a["Name"] for a in listed] == ["alpha", "beta", "live"]
    on_two = lam.list_aliases(FunctionName="fn", FunctionVersion="2")["Aliases"]
    assert [a["Name"] for a in on_two] == ["alpha", "live"]
    pages = list(
        lam.get_paginator("list_aliases").paginate(
            FunctionName="fn", PaginationConfig={"PageSize": 2}
        )
    )
    assert [[a["Name"] for a in p["Aliases"]] for p in pages] == [["alpha", "beta"], ["live"]]

    deleted = lam.delete_alias(FunctionName="fn", Name="live")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (
        lambda: lam.get_alias(FunctionName="fn", Name="live"),
        lambda: lam.invoke(FunctionName="fn", Qualifier="live"),
        lambda: lam.delete_alias(FunctionName="fn", Name="live"),
        lambda: lam.update_alias(FunctionName="fn", Name="live", FunctionVersion="1"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    assert [a["Name"] for a in lam.list_aliases(FunctionName="fn")["Aliases"]] == [
        "alpha",
        "beta",
    ]


def test_alias_to_missing_version_is_refused(lam: Any, two_versions: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        lam.create_alias(FunctionName="fn", Name="ghost", FunctionVersion="9")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as excinfo:
        lam.create_alias(
            FunctionName="fn",
            Name="ghost",
            FunctionVersion="1",
            RoutingConfig={"AdditionalVersionWeights": {"9": 0.5}},
        )
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as excinfo:
        lam.create_alias(FunctionName="nosuchfunction", Name="ghost", FunctionVersion="1")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    assert lam.list_aliases(FunctionName="fn")["Aliases"] == []

    lam.create_alias(FunctionName="fn", Name="live", FunctionVersion="1")
    with pytest.raises(ClientError) as excinfo:
        lam.update_alias(FunctionName="fn", Name="live", FunctionVersion="9")
    assert error_of(excinfo) == ("ResourceNotFoundException", 404)
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "1"
    assert payload_of(lam.invoke(FunctionName="fn:live"))["tag"] == "one"


@pytest.mark.parametrize(
    ("name", "version", "routing"),
    [
        ("7", "1", None),  # an alias name may not be all digits (it would read as a version)
        ("bad name", "1", None),
        ("a" * 129, "1", None),
        ("split", "$LATEST", {"2": 0.5}),  # routing needs a published primary version
        ("split", "1", {"$LATEST": 0.5}),
        ("split", "1", {"1": 0.5}),  # the extra version must differ from the primary
        ("split", "1", {"2": 1.5}),
        ("split", "1", {"2": 0.1, "3": 0.1}),
    ],
)
def test_invalid_alias_is_refused(
    raw_lam: Any, lam: Any, two_versions: str, name: str, version: str, routing: Any
) -> None:
    extra = {"RoutingConfig": {"AdditionalVersionWeights": routing}} if routing else {}
    with pytest.raises(ClientError) as excinfo:
        raw_lam.create_alias(FunctionName="fn", Name=name, FunctionVersion=version, **extra)
    assert error_of(excinfo) == ("InvalidParameterValueException", 400)
    assert lam.list_aliases(FunctionName="fn")["Aliases"] == []


def test_weighted_alias_runs_both_versions(lam: Any, two_versions: str) -> None:
    alias = lam.create_alias(
        FunctionName="fn",
        Name="canary",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.3}},
    )
    assert alias["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.3}}
    got = lam.get_alias(FunctionName="fn", Name="canary")
    assert got["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.3}}

    executed: Counter[str] = Counter()
    for _ in range(200):
        result = lam.invoke(FunctionName="fn", Qualifier="canary")
        body = payload_of(result)
        header = result["ResponseMetadata"]["HTTPHeaders"]["x-amz-executed-version"]
        assert result["ExecutedVersion"] == header
        # the version that ran is the version that answered, and the alias is what was invoked
        assert body["version"] == result["ExecutedVersion"]
        assert body["tag"] == {"1": "one", "2": "two"}[result["ExecutedVersion"]]
        assert body["arn"].endswith(":function:fn:canary")
        executed[result["ExecutedVersion"]] += 1
    assert set(executed) == {"1", "2"}
    # 30 % of 200 is 60, with a standard deviation near 6.5: these bounds are > 4 sigma wide
    assert 30 <= executed["2"] <= 95, executed

    lam.update_alias(
        FunctionName="fn", Name="canary", RoutingConfig={"AdditionalVersionWeights": {}}
    )
    assert "RoutingConfig" not in lam.get_alias(FunctionName="fn", Name="canary")
    after = {lam.invoke(FunctionName="fn:canary")["ExecutedVersion"] for _ in range(20)}
    assert after == {"1"}


def test_invoke_with_every_kind_of_reference(server: Any, lam: Any, two_versions: str) -> None:
    lam.create_alias(FunctionName="fn", Name="live", FunctionVersion="2")
    cases = [
        ({"FunctionName": "fn"}, "$LATEST", "latest", _arn(server, "fn")),
        ({"FunctionName": "fn:live"}, "2", "two", _arn(server, "fn", "live")),
        ({"FunctionName": "fn:1"}, "1", "one", _arn(server, "fn", "1")),
        ({"FunctionName": "fn:$LATEST"}, "$LATEST", "latest", _arn(server, "fn", "$LATEST")),
        ({"FunctionName": "fn", "Qualifier": "1"}, "1", "one", _arn(server, "fn", "1")),
        ({"FunctionName": "fn", "Qualifier": "live"}, "2", "two", _arn(server, "fn", "live")),
        ({"FunctionName": _arn(server, "fn")}, "$LATEST", "latest", _arn(server, "fn")),
        ({"FunctionName": _arn(server, "fn", "1")}, "1", "one", _arn(server, "fn", "1")),
        (
            {"FunctionName": _arn(server, "fn"), "Qualifier": "live"},
            "2",
            "two",
            _arn(server, "fn", "live"),
        ),
        (
            {"FunctionName": f"{server.platform.root.account_id}:function:fn:live"},
            "2",
            "two",
            _arn(server, "fn", "live"),
        ),
    ]
    for kwargs, version, tag, invoked_arn in cases:
        result = lam.invoke(**kwargs)
        body = payload_of(result)
        assert (result["ExecutedVersion"], body["tag"], body["version"]) == (
            version,
            tag,
            version,
        ), kwargs
        assert body["arn"] == invoked_arn, kwargs


def test_bad_references_are_refused(server: Any, lam: Any, two_versions: str) -> None:
    cases = [
        ({"FunctionName": "fn", "Qualifier": "9"}, ("ResourceNotFoundException", 404)),
        ({"FunctionName": "fn:9"}, ("ResourceNotFoundException", 404)),
        ({"FunctionName": "fn", "Qualifier": "nosuchalias"}, ("ResourceNotFoundException", 404)),
        ({"FunctionName": "fn:nosuchalias"}, ("ResourceNotFoundException", 404)),
        ({"FunctionName": "nosuchfunction"}, ("ResourceNotFoundException", 404)),
        ({"FunctionName": "nosuchfunction:1"}, ("ResourceNotFoundException", 404)),
        # another account's function is not visible, whatever its name
        (
            {"FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:fn"},
            ("ResourceNotFoundException", 404),
        ),
        # the name's qualifier and the Qualifier parameter disagree
        ({"FunctionName": "fn:1", "Qualifier": "2"}, ("InvalidParameterValueException", 400)),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ClientError) as excinfo:
            lam.invoke(**kwargs)
        assert error_of(excinfo) == expected, kwargs
