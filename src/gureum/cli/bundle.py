"""Code packages from a directory: a zip that is byte-for-byte the same for the same files."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from gureum.errors import InvalidParameterValue

SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
# zip's epoch; a fixed timestamp keeps the package (and its CodeSha256) stable across builds
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def zip_directory(root: Path) -> bytes:
    """Zip every file under `root` (sorted, fixed timestamps, no __pycache__ or .git).

    Files keep their executable bit; everything else is stored as 0644. Raises
    InvalidParameterValue when `root` holds no files.
    """
    files: list[tuple[str, Path]] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        base = Path(directory)
        for name in sorted(names):
            path = base / name
            if path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    if not files:
        raise InvalidParameterValue(f"{root} contains no files to deploy")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, path in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def handler_module_present(package: bytes, handler: str) -> bool:
    """Whether the module a `module.function` handler names is in the package."""
    module = handler.rpartition(".")[0].replace(".", "/")
    if not module:
        return False
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        names = set(archive.namelist())
    return f"{module}.py" in names or f"{module}/__init__.py" in names
