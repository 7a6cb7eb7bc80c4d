"""`gureum mapping …` against a real server: add, ls, set, disable/enable, rm, and a mapping
made by the CLI delivering queue messages to the function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli.test_cli import Cli, cli_env
from tests.conftest import RunningServer, make_zip, read_marks, wait_for

MARK = """
import json, os, uuid
def handler(event, context):
    with open(os.path.join(os.environ["MARKS"], uuid.uuid4().hex + ".json"), "w") as f:
        json.dump([record["body"] for record in event["Records"]], f)
"""


def _setup(server: RunningServer, marks: Path) -> tuple[Any, str]:
    with server.sdk() as client:
        client.create_function(
            "consume", make_zip({"app.py": MARK}), "app.handler", environment={"MARKS": str(marks)}
        )
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    return sqs, url


def test_mapping_lifecycle_and_delivery(server: RunningServer, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    sqs, url = _setup(server, marks)
    cli = Cli(cli_env(server, tmp_path))
    try:
        added = cli.json(
            "mapping", "add", "work", "consume", "--batch-size", "5", "--window", "1",
            "--report-batch-item-failures", "--max-concurrency", "3", "--disabled",
        )  # fmt: skip
        uuid = added["UUID"]
        assert added["EventSourceArn"].endswith(":work") and added["BatchSize"] == 5
        assert added["MaximumBatchingWindowInSeconds"] == 1
        assert added["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert added["ScalingConfig"] == {"MaximumConcurrency": 3}
        assert added["State"] == "Disabled"
        # the same mapping through boto3
        lam = server.client("lambda")
        assert lam.get_event_source_mapping(UUID=uuid)["BatchSize"] == 5
        lam.close()

        listed = cli.ok("mapping", "ls").stdout
        assert uuid in listed and "work" in listed and "consume" in listed
        assert [m["UUID"] for m in cli.json("mapping", "ls", "--function", "consume")] == [uuid]
        assert cli.json("mapping", "ls", "--queue", "other") == []

        changed = cli.json(
            "mapping", "set", uuid, "--batch-size", "10", "--no-report-batch-item-failures"
        )
        assert changed["BatchSize"] == 10 and changed["FunctionResponseTypes"] == []
        assert changed["ScalingConfig"] == {"MaximumConcurrency": 3}  # left alone

        # disabled: nothing is delivered; enabled: the messages arrive
        sqs.send_message(QueueUrl=url, MessageBody="one")
        sqs.send_message(QueueUrl=url, MessageBody="two")
        assert cli.json("mapping", "enable", uuid)["State"] == "Enabled"
        delivered = wait_for(
            lambda: sorted(body for batch in read_marks(marks) for body in batch) == ["one", "two"]
        )
        assert delivered
        text = cli.ok("mapping", "disable", uuid).stdout
        assert "Disabled" in text and uuid in text

        assert cli.json("mapping", "rm", uuid) == {"deleted": uuid}
        assert cli.json("mapping", "ls") == []
    finally:
        sqs.close()


def test_mapping_errors(server: RunningServer, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    sqs, _ = _setup(server, marks)
    sqs.close()
    cli = Cli(cli_env(server, tmp_path))
    missing_queue = cli("mapping", "add", "nope", "consume")
    assert missing_queue.exit_code == 1 and "error:" in missing_queue.stderr
    missing_function = cli("mapping", "add", "work", "nope")
    assert missing_function.exit_code == 1 and "ResourceNotFound" in missing_function.stderr
    unknown = cli("mapping", "rm", "00000000-0000-0000-0000-000000000000")
    assert unknown.exit_code == 1 and "ResourceNotFound" in unknown.stderr
    assert cli("mapping", "add", "work", "consume", "--batch-size", "0").exit_code == 2
    assert cli("mapping", "set", "00000000-0000-0000-0000-000000000000").exit_code == 2
    arn = _arn(cli, "work")
    assert cli.json("mapping", "add", arn, "consume")["EventSourceArn"] == arn  # an ARN works


def _arn(cli: Cli, queue: str) -> str:
    account = cli.json("whoami")["account_id"]
    return f"arn:aws:sqs:us-east-1:{account}:{queue}"
