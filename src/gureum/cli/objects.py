"""`gureum bucket …`, `gureum cp` and `gureum notify …`: object storage from the command line.

They use boto3's `s3` client against the same endpoint and credentials as every other command.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError as BotoClientError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from gureum.cli import render
from gureum.cli.options import JsonOutput, connect
from gureum.cli.render import fail, print_json, reports_errors, table

P = ParamSpec("P")
R = TypeVar("R")
PROGRESS_MIN_BYTES = 8 * 1024 * 1024  # smaller copies finish before a bar is worth drawing

bucket_app = typer.Typer(help="Create, list and remove buckets.", no_args_is_help=True)
notify_app = typer.Typer(help="Invoke functions on bucket changes.", no_args_is_help=True)
BucketName = Annotated[str, typer.Argument(metavar="BUCKET", help="Bucket name.")]


def reports_s3_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Like `reports_errors`, for errors boto3 raises."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BotoClientError as exc:
            _fail_with(exc)
        except S3UploadFailedError as exc:
            # boto3's transfer manager wraps the client error it raised in handling
            if isinstance(exc.__context__, BotoClientError):
                _fail_with(exc.__context__)
            fail("UploadFailed", str(exc))

    return reports_errors(run)


def _fail_with(exc: BotoClientError) -> NoReturn:
    error = exc.response.get("Error", {})
    fail(str(error.get("Code", "Error")), str(error.get("Message", exc)))


def _missing_object(s3: Any, bucket: str, key: str) -> NoReturn:
    """Say which is missing after a HEAD answered 404 (a HEAD error has no body to say it)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except BotoClientError:
        fail("NoSuchBucket", f"there is no bucket {bucket}")
    fail("NoSuchKey", f"there is no object s3://{bucket}/{key}")


@contextlib.contextmanager
def _s3() -> Iterator[Any]:
    with connect() as client:
        yield client.aws_client("s3")


@bucket_app.command("create")
@reports_s3_errors
def bucket_create(name: BucketName, json_output: JsonOutput = False) -> None:
    """Create a bucket."""
    with _s3() as s3:
        s3.create_bucket(Bucket=name)
    if json_output:
        print_json({"bucket": name})
    else:
        render.console().print(f"created bucket {name}")


@bucket_app.command("ls")
@reports_s3_errors
def bucket_list(
    name: Annotated[
        str | None, typer.Argument(metavar="[BUCKET]", help="List this bucket's objects.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    json_output: JsonOutput = False,
) -> None:
    """List buckets, or the objects in one bucket."""
    with _s3() as s3:
        if name is None:
            buckets = s3.list_buckets()["Buckets"]
            rows = [{"name": b["Name"], "created": b["CreationDate"].isoformat()} for b in buckets]
            if json_output:
                print_json(rows)
            else:
                table(["bucket", "created"], [(r["name"], r["created"]) for r in rows])
            return
        paginator = s3.get_paginator("list_objects_v2")
        objects = [
            {"key": o["Key"], "size": o["Size"], "modified": o["LastModified"].isoformat()}
            for page in paginator.paginate(Bucket=name, Prefix=prefix)
            for o in page.get("Contents", [])
        ]
        if json_output:
            print_json(objects)
        else:
            table(
                ["key", "size", "modified"],
                [(o["key"], render.size(o["size"]), o["modified"]) for o in objects],
            )


@bucket_app.command("rm")
@reports_s3_errors
def bucket_remove(
    name: BucketName,
    force: Annotated[bool, typer.Option("--force", help="Delete its objects first.")] = False,
    json_output: JsonOutput = False,
) -> None:
    """Remove a bucket (it must be empty unless --force)."""
    with _s3() as s3:
        if force:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=name)
        if json_output:
            print_json({"deleted": name})
        else:
            render.console().print(f"removed bucket {name}")


def _split_url(url: str) -> tuple[str, str] | None:
    """(bucket, key) of an s3://bucket/key URL; None for a local path."""
    if not url.startswith("s3://"):
        return None
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise typer.BadParameter(f"{url!r} names no bucket", param_hint="s3://BUCKET/KEY")
    return bucket, key


def _progress(total: int, label: str) -> tuple[Progress | None, Callable[[int], None] | None]:
    if total < PROGRESS_MIN_BYTES:
        return None, None
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=render.console(stderr=True),
        transient=True,
    )
    task = progress.add_task(label, total=total)
    return progress, lambda sent: progress.advance(task, sent)


@reports_s3_errors
def copy(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Local file or s3://B/KEY.")],
    destination: Annotated[
        str,
        typer.Argument(
            metavar="DEST", help="s3://B/KEY (or s3://B/ for the file's name), or a local path."
        ),
    ],
    json_output: JsonOutput = False,
) -> None:
    """Copy a local file into a bucket, or an object to a local file."""
    with _s3() as s3:
        src, dst = _split_url(source), _split_url(destination)
        if (src is None) == (dst is None):
            raise typer.BadParameter("exactly one of SOURCE and DEST must be an s3:// URL")
        if dst is not None:
            path = Path(source)
            if not path.is_file():
                raise typer.BadParameter(f"{source} is not a file", param_hint="SOURCE")
            bucket, key = dst
            if not key or key.endswith("/"):
                key += path.name
            progress, callback = _progress(path.stat().st_size, f"upload {path.name}")
            if progress is not None:
                with progress:
                    s3.upload_file(str(path), bucket, key, Callback=callback)
            else:
                s3.upload_file(str(path), bucket, key)
            result: dict[str, Any] = {
                "from": str(path),
                "to": f"s3://{bucket}/{key}",
                "size": path.stat().st_size,
            }
        else:
            assert src is not None
            bucket, key = src
            target = Path(destination)
            if target.is_dir():
                target = target / key.rsplit("/", 1)[-1]
            if not target.parent.is_dir():
                raise typer.BadParameter(f"{target.parent} is not a directory", param_hint="DEST")
            try:
                size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
            except BotoClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    _missing_object(s3, bucket, key)
                raise
            progress, callback = _progress(size, f"download {key}")
            try:
                if progress is not None:
                    with progress:
                        s3.download_file(bucket, key, str(target), Callback=callback)
                else:
                    s3.download_file(bucket, key, str(target))
            except OSError as exc:
                raise typer.BadParameter(
                    f"cannot write {target}: {exc.strerror}", param_hint="DEST"
                ) from None
            result = {"from": f"s3://{bucket}/{key}", "to": str(target), "size": size}
        if json_output:
            print_json(result)
        else:
            render.console().print(
                f"{result['from']} -> {result['to']} ({render.size(result['size'])})"
            )


@notify_app.command("add")
@reports_s3_errors
def notify_add(
    bucket: BucketName,
    function: Annotated[str, typer.Argument(metavar="FUNCTION", help="Function[:qualifier].")],
    events: Annotated[
        list[str] | None,
        typer.Option("--events", help="Event type (repeatable) [default: s3:ObjectCreated:*]."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    suffix: Annotated[str, typer.Option(help="Only keys ending with this.")] = "",
    json_output: JsonOutput = False,
) -> None:
    """Invoke FUNCTION (asynchronously, durably) when objects in BUCKET change."""
    with connect() as client:
        s3 = client.aws_client("s3")
        name, _, qualifier = function.partition(":")
        arn = client.aws_client("lambda").get_function(FunctionName=name)["Configuration"][
            "FunctionArn"
        ]
        if qualifier:
            arn += f":{qualifier}"
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        configs = current.setdefault("LambdaFunctionConfigurations", [])
        entry: dict[str, Any] = {
            "LambdaFunctionArn": arn,
            "Events": [
                e for item in events or ["s3:ObjectCreated:*"] for e in item.split(",") if e
            ],
        }
        rules = [{"Name": n, "Value": v} for n, v in (("prefix", prefix), ("suffix", suffix)) if v]
        if rules:
            entry["Filter"] = {"Key": {"FilterRules": rules}}
        configs.append(entry)
        # the whole configuration is replaced: keep its other kinds (QueueConfigurations)
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
        _show(s3, bucket, json_output)


@notify_app.command("ls")
@reports_s3_errors
def notify_list(bucket: BucketName, json_output: JsonOutput = False) -> None:
    """Show the bucket's notification configuration."""
    with _s3() as s3:
        _show(s3, bucket, json_output)


@notify_app.command("clear")
@reports_s3_errors
def notify_clear(bucket: BucketName, json_output: JsonOutput = False) -> None:
    """Remove every notification from the bucket."""
    with _s3() as s3:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
        _show(s3, bucket, json_output)


def _show(s3: Any, bucket: str, json_output: bool) -> None:
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    rows = [
        {
            "id": c["Id"],
            "kind": kind,
            kind: c[arn_field],
            "events": c["Events"],
            "filters": {
                r["Name"]: r["Value"]
                for r in c.get("Filter", {}).get("Key", {}).get("FilterRules", [])
            },
        }
        for field, kind, arn_field in (
            ("LambdaFunctionConfigurations", "function", "LambdaFunctionArn"),
            ("QueueConfigurations", "queue", "QueueArn"),
        )
        for c in current.get(field, [])
    ]
    if json_output:
        print_json(rows)
        return
    table(
        ["id", "destination", "events", "filters"],
        [
            (
                r["id"],
                f"{r['kind']} {r[r['kind']]}",
                ",".join(r["events"]),
                " ".join(f"{k}={v}" for k, v in r["filters"].items()),
            )
            for r in rows
        ],
    )
