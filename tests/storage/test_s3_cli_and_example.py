"""`gureum bucket|cp|notify` against a real server, and the thumbnails example end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.client import Client
from tests.conftest import RunningServer, make_zip

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thumbnails"


def cli_env(server: RunningServer) -> dict[str, str]:
    root = server.platform.root
    return {
        "GUREUM_ENDPOINT": server.endpoint,
        "AWS_ACCESS_KEY_ID": root.access_key_id,
        "AWS_SECRET_ACCESS_KEY": root.secret_access_key,
        "GUREUM_REGION": server.settings.region,
    }


def run(server: RunningServer, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"], env=cli_env(server))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def _create_on_upload(lam: Any) -> None:
    lam.create_function(
        FunctionName="on-upload",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": "def handler(e, c): return 1"})},
    )


def test_bucket_cp_and_notify_commands(server: RunningServer, tmp_path: Path, lam: Any) -> None:
    assert run(server, "bucket", "create", "cli-bucket") == {"bucket": "cli-bucket"}
    assert [b["name"] for b in run(server, "bucket", "ls")] == ["cli-bucket"]
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))  # big enough for the progress bar path
    copied = run(server, "cp", str(source), "s3://cli-bucket/dir/")
    assert copied["to"] == "s3://cli-bucket/dir/data.bin"
    listed = run(server, "bucket", "ls", "cli-bucket")
    assert [(o["key"], o["size"]) for o in listed] == [("dir/data.bin", source.stat().st_size)]
    back = tmp_path / "back.bin"
    run(server, "cp", "s3://cli-bucket/dir/data.bin", str(back))
    assert back.read_bytes() == source.read_bytes()

    _create_on_upload(lam)
    shown = run(
        server,
        "notify",
        "add",
        "cli-bucket",
        "on-upload",
        "--events",
        "s3:ObjectCreated:Put",
        "--prefix",
        "in/",
        "--suffix",
        ".jpg",
    )
    assert shown[0]["function"].endswith(":function:on-upload")
    assert shown[0]["events"] == ["s3:ObjectCreated:Put"]
    assert shown[0]["filters"] == {"prefix": "in/", "suffix": ".jpg"}
    assert run(server, "notify", "clear", "cli-bucket") == []

    failed = CliRunner().invoke(app, ["bucket", "rm", "cli-bucket"], env=cli_env(server))
    assert failed.exit_code == 1 and "BucketNotEmpty" in failed.stderr
    assert run(server, "bucket", "rm", "cli-bucket", "--force") == {"deleted": "cli-bucket"}
    assert run(server, "bucket", "ls") == []


def test_cp_errors_are_reported_not_raised(server: RunningServer, tmp_path: Path) -> None:
    run(server, "bucket", "create", "cp-errors")
    small = tmp_path / "small.txt"
    small.write_bytes(b"small")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # a multipart upload

    def failed(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args), env=cli_env(server))
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    for source in (small, big):
        result = failed("cp", str(source), "s3://no-such-bucket/")
        assert result.exit_code == 1
        # (after what is left of the progress bar, for the big file)
        assert result.stderr.strip().startswith("error: NoSuchBucket: "), result.stderr
    result = failed("cp", "s3://cp-errors/nope", str(tmp_path / "out"))
    assert result.exit_code == 1 and result.stderr.startswith("error: NoSuchKey: ")
    assert "s3://cp-errors/nope" in result.stderr
    result = failed("cp", "s3://no-such-bucket/nope", str(tmp_path / "out"))
    assert result.exit_code == 1 and result.stderr.startswith("error: NoSuchBucket: ")
    run(server, "cp", str(small), "s3://cp-errors/")
    result = failed("cp", "s3://cp-errors/small.txt", str(tmp_path / "no-dir" / "x"))
    assert result.exit_code == 2 and "is not a directory" in result.stderr
    assert not (tmp_path / "no-dir").exists()


def test_notify_add_keeps_the_queue_configurations(
    server: RunningServer, s3: Any, bucket: str, lam: Any
) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    queue = {
        "Id": "to-queue",
        "QueueArn": attributes["Attributes"]["QueueArn"],
        "Events": ["s3:ObjectRemoved:*"],
    }
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [queue]}
    )
    _create_on_upload(lam)
    shown = run(server, "notify", "add", bucket, "on-upload")
    assert [(r["kind"], r["id"]) for r in shown][1:] == [("queue", "to-queue")]
    assert shown[1]["queue"] == queue["QueueArn"] and shown[1]["events"] == queue["Events"]
    assert shown[0]["kind"] == "function" and shown[0]["function"].endswith(":on-upload")
    assert run(server, "notify", "ls", bucket) == shown
    listed = CliRunner().invoke(app, ["notify", "ls", bucket], env=cli_env(server))
    assert listed.exit_code == 0 and "to-queue" in listed.stdout and "queue" in listed.stdout
    got = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert got["QueueConfigurations"] == [queue]
    assert [c["Events"] for c in got["LambdaFunctionConfigurations"]] == [["s3:ObjectCreated:*"]]


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG, built by hand (the test process has no Pillow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x % 256, y % 256, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def thumbnails_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("thumbnails-site")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--target",
                str(site),
                "-r",
                str(EXAMPLE / "requirements.txt"),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"Pillow could not be installed from PyPI for the example: {exc}")
    return site


def test_thumbnails_example(server: RunningServer, thumbnails_site: Path) -> None:
    spec = importlib.util.spec_from_file_location("thumbnails_deploy", EXAMPLE / "deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with Client.from_environment(cli_env(server)) as client:
        arn = module.deploy(client, module.build_package(thumbnails_site))
        s3 = client.aws_client("s3")
        assert arn.endswith(":function:thumbnails")
        s3.put_object(Bucket="images", Key="holiday/beach.png", Body=png(640, 480))
        s3.put_object(Bucket="images", Key="notes.txt", Body=b"not an image: filtered out")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = s3.list_objects_v2(Bucket="thumbnails").get("Contents", [])
            if found:
                break
            time.sleep(0.2)
        assert [o["Key"] for o in found] == ["thumbs/holiday/beach.png"]
        thumb = s3.get_object(Bucket="thumbnails", Key="thumbs/holiday/beach.png")
        data = thumb["Body"].read()
        assert thumb["ContentType"] == "image/png" and data.startswith(b"\x89PNG")
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (128, 96)
