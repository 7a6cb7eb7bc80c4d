"""Fixtures for the S3 API tests: the real boto3 `s3` client against a real server, and raw
requests signed with botocore's own signers for what boto3 will not send."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.conftest import RunningServer

_names = itertools.count()


@pytest.fixture
def s3(server: RunningServer) -> Any:
    return server.client("s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"bucket-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name
