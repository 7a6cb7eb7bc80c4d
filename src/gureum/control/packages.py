"""Function code packages: validate uploaded zip files and store them content-addressed.

A package is checked as a whole (names, entry types, sizes, compression ratios) before anything
is extracted, extracted into a private temporary directory with the sizes enforced again on the
real bytes, byte-compiled there, and only then renamed into place, so a reader never sees a
half-written package.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gureum.errors import (
    InvalidParameterValue,
    RequestTooLarge,
    ResourceNotFound,
    ServiceError,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")
_TEMP_PREFIX = ".tmp-"
# A crashed put leaves its temporary directory behind; anything this old is no longer in use.
_STALE_TEMP_S = 3600.0
_CHUNK = 64 * 1024
_MAX_NAME_COMPONENT_BYTES = 255
# Byte-compiling a package: a child process with these limits; past the time, the package is
# stored with what was compiled by then (the rest compiles at import, as without this).
_COMPILE_TIMEOUT_S = 60.0
_COMPILE_MEMORY_BYTES = 2 << 30
_COMPILE = (
    "import compileall, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))\n"
    "compileall.compile_dir(sys.argv[1], quiet=2, force=True)\n"
)
# Tiny, very compressible files (empty __init__.py, padding) are harmless whatever their ratio;
# the ratio cap only matters once the expanded size is large enough to hurt.
_RATIO_EXEMPT_BYTES = 1024 * 1024
_SUPPORTED_COMPRESSION = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
# What a corrupt or hostile member can raise while zipfile opens or decompresses it.
_UNZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True)
class PackageLimits:
    """Size limits for one uploaded package; the defaults are AWS Lambda's."""

    max_zip_bytes: int = 50 * 1024 * 1024
    max_unzipped_bytes: int = 250 * 1024 * 1024
    max_files: int = 10_000
    max_ratio: float = 200.0  # per entry and overall; a higher ratio suggests a zip bomb


@dataclass(frozen=True)
class StoredPackage:
    """A validated package on disk. `path` is its extracted tree, which callers must not modify."""

    sha256_hex: str
    sha256_b64: str  # base64 of the raw digest, as AWS's CodeSha256
    size: int  # zip size in bytes, as AWS's CodeSize
    path: Path


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool
    mode: int


def _unzip_error(detail: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"Could not unzip uploaded file: {detail}")


def _unzipped_too_large(limits: PackageLimits) -> InvalidParameterValue:
    return InvalidParameterValue(
        f"Unzipped size must be smaller than {limits.max_unzipped_bytes} bytes"
    )


def _entry_parts(raw_name: str) -> tuple[str, ...]:
    """Split an entry name into safe path components, or raise."""
    if "\x00" in raw_name:
        raise _unzip_error(f"entry name {raw_name!r} contains a NUL byte")
    if "\\" in raw_name:
        raise _unzip_error(f"entry {raw_name!r} contains a backslash; use '/' as separator")
    if raw_name.startswith("/") or _DRIVE_LETTER.match(raw_name):
        raise _unzip_error(f"entry {raw_name!r} is an absolute path")
    parts = tuple(p for p in raw_name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _unzip_error(f"entry {raw_name!r} escapes the package root")
    if not parts:
        raise _unzip_error(f"entry {raw_name!r} has an empty name")
    if any(len(os.fsencode(p)) > _MAX_NAME_COMPONENT_BYTES for p in parts):
        raise _unzip_error(f"entry {raw_name!r} has a path component longer than 255 bytes")
    return parts


def _entry_type(info: zipfile.ZipInfo) -> tuple[bool, int]:
    """Return (is_dir, file mode) for an entry, rejecting anything but files and directories."""
    unix_mode = info.external_attr >> 16
    kind = stat.S_IFMT(unix_mode)
    if kind == stat.S_IFLNK:
        raise _unzip_error(f"entry {info.orig_filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _unzip_error(f"entry {info.orig_filename!r} is a device, FIFO or socket")
    is_dir = kind == stat.S_IFDIR or info.orig_filename.endswith("/")
    return is_dir, 0o755 if is_dir or unix_mode & 0o111 else 0o644


def _check_ratio(what: str, expanded: int, compressed: int, limits: PackageLimits) -> None:
    if expanded <= _RATIO_EXEMPT_BYTES:
        return
    ratio = expanded / max(compressed, 1)
    if ratio > limits.max_ratio:
        raise _unzip_error(
            f"{what} expands {ratio:.0f}x, more than the {limits.max_ratio:g}x allowed"
            " (possible zip bomb)"
        )


def _plan(archive: zipfile.ZipFile, limits: PackageLimits) -> list[_Entry]:
    """Check every entry's header; nothing is decompressed here."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise _unzip_error(
            f"the package has {len(infos)} entries, more than the {limits.max_files} allowed"
        )
    entries: dict[tuple[str, ...], _Entry] = {}
    declared = compressed = 0
    for info in infos:
        parts = _entry_parts(info.orig_filename)
        is_dir, mode = _entry_type(info)
        if info.flag_bits & 0x1:
            raise _unzip_error(f"entry {info.orig_filename!r} is encrypted")
        if info.compress_type not in _SUPPORTED_COMPRESSION:
            raise _unzip_error(
                f"entry {info.orig_filename!r} uses unsupported compression {info.compress_type}"
            )
        if parts in entries:
            raise _unzip_error(f"duplicate entry {'/'.join(parts)!r}")
        entries[parts] = _Entry(info, parts, is_dir, mode)
        _check_ratio(f"entry {info.orig_filename!r}", info.file_size, info.compress_size, limits)
        declared += info.file_size
        compressed += info.compress_size
    if declared > limits.max_unzipped_bytes:
        raise _unzipped_too_large(limits)
    _check_ratio("the package", declared, compressed, limits)
    for parts in entries:
        for depth in range(1, len(parts)):
            parent = entries.get(parts[:depth])
            if parent is not None and not parent.is_dir:
                raise _unzip_error(
                    f"entry {'/'.join(parts)!r} is inside {'/'.join(parent.parts)!r}, a file"
                )
    return list(entries.values())


def _copy_capped(
    src: IO[bytes], dst: IO[bytes], name: str, declared: int, budget: int, limits: PackageLimits
) -> int:
    """Copy `src` to `dst` in chunks; fail once it outgrows `declared` or `budget` bytes.

    zipfile already stops at the declared size; this counts what is really written so that
    neither a lying header nor a zipfile change can let more than the caps reach the disk.
    """
    written = 0
    while True:
        try:
            chunk = src.read(_CHUNK)
        except _UNZIP_ERRORS as exc:
            raise _unzip_error(f"entry {name!r}: {exc}") from None
        if not chunk:
            return written
        written += len(chunk)
        if written > declared:
            raise _unzip_error(f"entry {name!r} is larger than its header declares")
        if written > budget:
            raise _unzipped_too_large(limits)
        dst.write(chunk)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _extract(
    archive: zipfile.ZipFile, entries: list[_Entry], dest: Path, limits: PackageLimits
) -> None:
    """Stream every entry into `dest`, which must be an empty directory."""
    dirs = {e.parts for e in entries if e.is_dir}
    dirs.update(e.parts[:depth] for e in entries for depth in range(1, len(e.parts)))
    for parts in sorted(dirs, key=len):
        path = dest.joinpath(*parts)
        path.mkdir()
        path.chmod(0o755)
    remaining = limits.max_unzipped_bytes
    for entry in entries:
        if entry.is_dir:
            continue
        name = entry.info.orig_filename
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(dest.joinpath(*entry.parts), flags, 0o600)
        with os.fdopen(fd, "wb") as dst:
            try:
                src = archive.open(entry.info)
            except _UNZIP_ERRORS as exc:
                raise _unzip_error(f"entry {name!r}: {exc}") from None
            with src:
                declared = entry.info.file_size
                remaining -= _copy_capped(src, dst, name, declared, remaining, limits)
            dst.flush()
            os.fchmod(fd, entry.mode)
            os.fsync(fd)
    for parts in dirs:
        _fsync_dir(dest.joinpath(*parts))
    dest.chmod(0o755)
    _fsync_dir(dest)


def _precompile(tree: Path) -> None:
    """Byte-compile the package's Python files for the interpreter instances run on, so a cold
    start loads bytecode instead of compiling source (and importing the tokenizer to read it):
    ~1 ms for a one-file handler, far more for a large one. An instance could never cache it
    itself: its code is mounted read-only. Best effort: a file that does not compile is left
    for the import to report, as before. The compiler runs in a child process with a time and
    memory limit, so a hostile source file costs that process, not the server."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", _COMPILE, str(tree), str(_COMPILE_MEMORY_BYTES)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_COMPILE_TIMEOUT_S,
            check=False,
        )
    # as durable as the sources: a torn .pyc would fail the import instead of falling back
    for cache in tree.rglob("__pycache__"):
        if cache.is_dir() and not cache.is_symlink():
            for entry in cache.iterdir():
                if entry.suffix == ".pyc" and entry.is_file():
                    fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            _fsync_dir(cache)
            _fsync_dir(cache.parent)


class PackageStore:
    """Content-addressed packages under `root`: root/<sha256>.zip and root/<sha256>/ (extracted).

    A package is visible (to `get`, `zip_path`) once both exist; `put` renames the extracted
    tree into place first and the zip last, each atomically. Any number of threads or processes
    may `put` at once, including the same bytes. `delete` must only be called for a package no
    function uses any more, and not concurrently with a `put` of the same bytes;
    `delete_unless_used_since` is the safe form for sweeping (`put` of stored bytes marks the
    package as used, under the same lock).
    """

    def __init__(self, root: Path, limits: PackageLimits = PackageLimits()) -> None:
        self.root = root
        self.limits = limits
        self._lock = threading.Lock()  # a put of stored bytes vs a sweep deleting them
        root.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_temps()

    def put(self, data: bytes) -> StoredPackage:
        """Validate `data` as a zip package and store it; storing identical bytes again is a no-op.

        Raises InvalidParameterValue for a malformed or unsafe package and RequestTooLarge when
        the zip itself is over the limit; nothing is left behind on failure.
        """
        if not data:
            raise _unzip_error("the uploaded file is empty")
        if len(data) > self.limits.max_zip_bytes:
            raise RequestTooLarge(
                f"Zipped code package must be smaller than {self.limits.max_zip_bytes} bytes,"
                f" got {len(data)}"
            )
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except _UNZIP_ERRORS as exc:
            raise _unzip_error(str(exc)) from None
        digest = hashlib.sha256(data).digest()
        with archive:
            entries = _plan(archive, self.limits)
            package = self._package(digest.hex(), len(data))
            with self._lock:
                if self._is_stored(package.sha256_hex):
                    # used again: a sweep must not take it between here and the caller
                    # naming it in the registry
                    os.utime(self.root / f"{package.sha256_hex}.zip")
                    return package
            try:
                self._store(archive, entries, data, package)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    raise _unzip_error("an entry's path is too long") from None
                raise ServiceError(f"Could not store code package: {exc}") from exc
        return package

    def get(self, sha256_hex: str) -> StoredPackage:
        """Return the stored package with this digest; raise ResourceNotFound if there is none."""
        zip_path = self.zip_path(sha256_hex)
        try:
            size = zip_path.stat().st_size
        except FileNotFoundError:
            raise ResourceNotFound(f"Code package {zip_path.stem} not found") from None
        return self._package(zip_path.stem, size)

    def zip_path(self, sha256_hex: str) -> Path:
        """Return the stored zip's path; raise ResourceNotFound if the package is not stored."""
        sha256_hex = self._checked_hex(sha256_hex)
        if not self._is_stored(sha256_hex):
            raise ResourceNotFound(f"Code package {sha256_hex} not found")
        return self.root / f"{sha256_hex}.zip"

    def delete(self, sha256_hex: str) -> None:
        """Remove the zip, then the extracted tree; a no-op when the package is absent."""
        sha256_hex = self._checked_hex(sha256_hex)
        (self.root / f"{sha256_hex}.zip").unlink(missing_ok=True)
        # Move the tree aside first so nobody ever sees it half-deleted.
        trash = Path(tempfile.mkdtemp(dir=self.root, prefix=_TEMP_PREFIX))
        try:
            os.rename(self.root / sha256_hex, trash / sha256_hex)
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def unused_since(self, cutoff: float) -> list[str]:
        """Digests of the stored packages not stored or put again since `cutoff` (epoch s)."""
        found = []
        for entry in os.scandir(self.root):
            name, _, suffix = entry.name.partition(".")
            if suffix == "zip" and _SHA256_HEX.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        found.append(name)
        return found

    def delete_unless_used_since(self, sha256_hex: str, cutoff: float) -> bool:
        """Delete the package unless it was stored or put again since `cutoff`; whether it was
        deleted. For a sweep that found no function naming it."""
        with self._lock:
            try:
                if (self.root / f"{sha256_hex}.zip").stat().st_mtime >= cutoff:
                    return False
            except FileNotFoundError:
                return False
            self.delete(sha256_hex)
            return True

    def _store(
        self, archive: zipfile.ZipFile, entries: list[_Entry], data: bytes, package: StoredPackage
    ) -> None:
        tmp_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=_TEMP_PREFIX))
        renamed = False
        try:
            _extract(archive, entries, tmp_dir, self.limits)
            _precompile(tmp_dir)
            try:
                os.rename(tmp_dir, package.path)
                renamed = True
            except OSError as exc:
                # Someone stored the same bytes first; their tree is identical to ours.
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            if not renamed:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        self._write_zip(data, package.sha256_hex)
        _fsync_dir(self.root)

    def _write_zip(self, data: bytes, sha256_hex: str) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=".zip")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            os.replace(tmp_name, self.root / f"{sha256_hex}.zip")
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _package(self, sha256_hex: str, size: int) -> StoredPackage:
        b64 = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        return StoredPackage(sha256_hex, b64, size, self.root / sha256_hex)

    def _is_stored(self, sha256_hex: str) -> bool:
        return (self.root / f"{sha256_hex}.zip").is_file() and (self.root / sha256_hex).is_dir()

    @staticmethod
    def _checked_hex(sha256_hex: str) -> str:
        lowered = sha256_hex.lower()
        if not _SHA256_HEX.fullmatch(lowered):
            raise InvalidParameterValue(f"{sha256_hex!r} is not a SHA-256 hex digest")
        return lowered

    def _sweep_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_S
        for path in self.root.glob(f"{_TEMP_PREFIX}*"):
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
