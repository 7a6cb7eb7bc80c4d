"""The libraries offered on every function's Python path (boto3, as AWS's runtime offers)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

# boto3 and everything it imports; never gureum or its other dependencies.
OFFERED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


def offered_packages() -> list[Path]:
    """Where the offered packages are installed: package directories, or module files."""
    found = []
    for name in OFFERED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        found.append(origin.parent if spec.submodule_search_locations else origin)
    return found


def prepare_runtime_libraries(target: Path) -> Path:
    """Fill `target` with links to the offered packages and return it (rebuilt every start)."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for source in offered_packages():
        os.symlink(source, staging / source.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
