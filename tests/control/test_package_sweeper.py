"""Code packages no function or version names any more are deleted; named ones never are."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from gureum.control.package_sweeper import GRACE_S
from gureum.control.packages import PackageStore
from tests.conftest import RunningServer, make_zip


def code(tag: str) -> bytes:
    return make_zip({"app.py": f"def handler(event, context):\n    return {tag!r}\n"})


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create(lam: Any, name: str, data: bytes) -> None:
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="arn:aws:iam::123456789012:role/sweep",
        Handler="app.handler",
        Code={"ZipFile": data},
    )


def answer(lam: Any, name: str) -> Any:
    return json.loads(lam.invoke(FunctionName=name)["Payload"].read())


def test_unnamed_packages_are_swept_and_named_ones_kept(server: RunningServer, lam: Any) -> None:
    first, second, dropped, replaced, current = (
        code(t) for t in ("first", "second", "dropped", "replaced", "current")
    )
    create(lam, "keep", first)
    assert lam.publish_version(FunctionName="keep")["Version"] == "1"  # version 1 names `first`
    lam.update_function_code(FunctionName="keep", ZipFile=second)
    create(lam, "gone", dropped)
    lam.delete_function(FunctionName="gone")
    create(lam, "swap", replaced)
    lam.update_function_code(FunctionName="swap", ZipFile=current)
    store: PackageStore = server.platform.packages
    sweeper = server.platform.package_sweeper

    assert server.run(sweeper.sweep()) == 0  # everything is younger than the grace period
    deleted = server.run(sweeper.sweep(now=time.time() + 2 * GRACE_S))

    assert deleted == 2
    kept = {p.stem for p in store.root.glob("*.zip")}
    assert kept == {digest(first), digest(second), digest(current)}
    assert not (store.root / digest(dropped)).exists()
    assert not (store.root / digest(replaced)).exists()
    assert answer(lam, "keep:1") == "first"
    assert answer(lam, "keep") == "second"
    assert answer(lam, "swap") == "current"
    # the deleted bytes can be deployed again
    create(lam, "again", dropped)
    assert answer(lam, "again") == "dropped"
    sha = lam.get_function(FunctionName="again")["Configuration"]["CodeSha256"]
    assert base64.b64decode(sha).hex() == digest(dropped)


def test_putting_stored_bytes_again_protects_them_from_a_sweep(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "code")
    data = code("x")
    package = store.put(data)
    zip_path = store.root / f"{package.sha256_hex}.zip"
    old = time.time() - 10 * GRACE_S
    os.utime(zip_path, (old, old))
    assert store.unused_since(time.time() - GRACE_S) == [package.sha256_hex]

    store.put(data)  # a deployment of the same bytes, about to name them

    assert not store.delete_unless_used_since(package.sha256_hex, time.time() - GRACE_S)
    assert store.get(package.sha256_hex) == package
    assert store.delete_unless_used_since(package.sha256_hex, time.time() + 1)
    assert store.unused_since(time.time() + 1) == []
