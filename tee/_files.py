"""Private files of the emulated platform and the KMS: owner-only permissions,
atomic replacement, and a clear refusal when permissions are too loose.

Other users on the machine must not read a root secret, so a directory looser
than 0700 or a file looser than 0600 is refused with the `chmod` that fixes it
instead of being used (or silently tightened, which would hide a leak).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from otrace.errors import ConfigError

__all__ = [
    "create_private_file_once",
    "ensure_private_dir",
    "load_or_create_secret",
    "overwrite_private_file",
    "read_private_file",
    "write_private_file",
]

_GROUP_OR_OTHER = stat.S_IRWXG | stat.S_IRWXO


def ensure_private_dir(directory: Path) -> Path:
    """Create `directory` (0700) if missing; refuse it if group or others have access."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = directory.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot create or read directory {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"{directory} exists and is not a directory")
    if mode & _GROUP_OR_OTHER:
        raise ConfigError(
            f"directory {directory} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 700 {directory}`"
        )
    return directory


def _open_private(path: Path, flags: int) -> int | None:
    """A descriptor of `path` (never through a symlink), or None if it does not exist."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from exc


def _refuse_loose(path: Path, mode: int) -> None:
    if mode & _GROUP_OR_OTHER:
        raise ConfigError(
            f"file {path} is readable or writable by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )


def read_private_file(path: Path) -> bytes | None:
    """The bytes of `path`, or None if it does not exist; refuse loose permissions."""
    fd = _open_private(path, os.O_RDONLY)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path} is not a regular file")
        _refuse_loose(path, mode)
        return handle.read()


def write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    temp = _temp_name(path)
    try:
        _write_synced(temp, data)
        os.replace(temp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def overwrite_private_file(path: Path, data: bytes) -> bool:
    """Overwrite `path` in place with `data` of its own size, without fsync.

    One `pwrite` into a small file: a killed writer leaves the old or the new
    bytes, an OS crash or power loss may bring back the old ones. Readers
    racing the write must hold the writer's lock (a read may see a mix). Returns
    False, writing nothing, when `path` is missing or of another size: the
    caller then replaces it durably with `write_private_file`.
    """
    fd = _open_private(path, os.O_WRONLY)
    if fd is None:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
            return False
        _refuse_loose(path, info.st_mode)
        if os.pwrite(fd, data, 0) != len(data):
            raise ConfigError(f"cannot write {path}: short write")
        return True
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def create_private_file_once(path: Path, data: bytes) -> bytes:
    """Create `path` holding `data` unless it exists; return what `path` holds afterwards.

    Two processes racing to create a platform secret must end up with the same
    one, so the file appears by `link` (which fails if it exists), never by rename.
    """
    temp = _temp_name(path)
    try:
        _write_synced(temp, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    finally:
        temp.unlink(missing_ok=True)
    existing = read_private_file(path)
    if existing is None:
        raise ConfigError(f"{path} vanished while being created")
    return existing


def load_or_create_secret(path: Path, what: str) -> bytes:
    """The 32-byte secret at `path`, created from `os.urandom` on first use."""
    data = read_private_file(path)
    if data is None:
        data = create_private_file_once(path, os.urandom(32))
    if len(data) != 32:
        raise ConfigError(f"{what} {path} must hold exactly 32 bytes; it holds {len(data)}")
    return data


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _write_synced(path: Path, data: bytes) -> None:
    # Temp names are unique among live threads, so an existing one is a crash leftover.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
