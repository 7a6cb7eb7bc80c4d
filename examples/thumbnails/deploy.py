"""Deploy the thumbnails example with one command: `python examples/thumbnails/deploy.py`.

Vendors Pillow into the function's zip (`pip install --target`, wheels for this machine's
Python), deploys the function `thumbnails`, creates the buckets `images` and `thumbnails`, and
invokes the function for every `.png`/`.jpg` uploaded to `images`. It finds the server like
the `gureum` command does (GUREUM_ENDPOINT / AWS_* variables, else the data dir of
`gureum up`).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from botocore.exceptions import ClientError

from gureum.client import Client

HERE = Path(__file__).resolve().parent
FUNCTION = "thumbnails"


def build_package(cache: Path | None = None) -> bytes:
    """The function zip: app.py plus Pillow, installed for this interpreter."""
    site = cache or Path(tempfile.mkdtemp(prefix="thumbnails-"))
    if not (site / "PIL").is_dir():
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
                str(HERE / "requirements.txt"),
            ],
            check=True,
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(HERE / "app.py", "app.py")
        for path in sorted(site.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                # shared libraries stored as they are: some compress better than the zip-bomb
                # guard's 200x ratio allows
                stored = ".so" in path.suffixes or path.suffix == ".so"
                method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(site).as_posix(), compress_type=method)
    return buffer.getvalue()


def deploy(
    client: Client, package: bytes, source: str = "images", target: str = "thumbnails"
) -> str:
    """Create or update everything; return the function ARN."""
    lam, s3 = client.aws_client("lambda"), client.aws_client("s3")
    for bucket in (source, target):
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
    environment = {"Variables": {"THUMBNAIL_BUCKET": target}}
    try:
        arn = lam.get_function(FunctionName=FUNCTION)["Configuration"]["FunctionArn"]
        lam.update_function_code(FunctionName=FUNCTION, ZipFile=package)
        lam.update_function_configuration(FunctionName=FUNCTION, Environment=environment)
    except lam.exceptions.ResourceNotFoundException:
        arn = lam.create_function(
            FunctionName=FUNCTION,
            Runtime="python3.11",
            Role="thumbnails",
            Handler="app.handler",
            Code={"ZipFile": package},
            Timeout=60,
            MemorySize=512,
            Environment=environment,
        )["FunctionArn"]
    rules = [
        {
            "LambdaFunctionArn": arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": suffix}]}},
        }
        for suffix in (".png", ".jpg")
    ]
    s3.put_bucket_notification_configuration(
        Bucket=source, NotificationConfiguration={"LambdaFunctionConfigurations": rules}
    )
    return str(arn)


def main() -> None:
    with Client.from_environment(os.environ) as client:
        arn = deploy(client, build_package())
    print(f"deployed {arn}")
    print("try: gureum cp photo.png s3://images/ && gureum bucket ls thumbnails")


if __name__ == "__main__":
    main()
