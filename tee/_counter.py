"""Emulated monotonic counters, one file per name under `<platform>/counters/`.

A real TEE keeps these in tamper-resistant hardware (SGX PSE, TPM NV). Here a
counter file holds `version (1) | value (8, big-endian) | HMAC-SHA256 (32)`,
the HMAC keyed by HKDF(platform root, "counter") over the name and value, so
editing the file is detected. Replacing it with an *older authentic copy* is not
detectable by an emulation; SECURITY.md says so. Writes are atomic (temp file,
fsync, rename, fsync of the directory) and serialised by an advisory file lock,
so two processes advancing one counter never lose an update. A caller may skip
the fsyncs (`advance(value, durable=False)`): the value is then written in place
(one `pwrite`, no rename), safe from a killed process, but an OS crash or power
loss may bring back an older value (never a newer one). Reads take the same lock,
so they never see half of an in-place write.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from otrace.errors import ConfigError, IntegrityError
from tee._files import (
    ensure_private_dir,
    overwrite_private_file,
    read_private_file,
    write_private_file,
)
from tee._platform import Platform

__all__ = ["FreshnessCounter", "MonotonicCounter"]

_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_VALUE = 2**64 - 1


class FreshnessCounter(Protocol):
    """What the ORAM needs to detect rollback (the ORAM defines the same Protocol)."""

    def current(self) -> int: ...

    def advance(self, value: int, *, durable: bool = True) -> None: ...


class MonotonicCounter:
    """A named counter that never goes down and survives restarts; satisfies `FreshnessCounter`."""

    __slots__ = ("_key", "_lock", "_name", "_path")

    def __init__(self, platform: Platform, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"counter name {name!r} must be 1-128 characters of letters, digits, '.', '_', '-'"
            )
        directory = ensure_private_dir(platform.directory / "counters")
        self._name = name
        self._path = directory / f"{name}.ctr"
        self._key = platform.derive_key(b"counter")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MonotonicCounter(name={self._name!r})"

    @property
    def name(self) -> str:
        return self._name

    def current(self) -> int:
        """The last value advanced to (0 for a new counter); a tampered file raises."""
        with self._exclusive():
            return self._read()

    def _read(self) -> int:
        data = read_private_file(self._path)
        return 0 if data is None else self._decode(data)

    def advance(self, value: int, *, durable: bool = True) -> None:
        """Set the counter to max(current, value).

        Durable before this returns by default. With `durable=False` the value
        survives the process being killed but not an OS crash or power loss,
        after which the counter may read lower (never higher): for callers that
        advance after every durable commit and accept a short window (ORAM).
        """
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_VALUE:
            raise ConfigError("a counter value is an integer in [0, 2**64)")
        with self._exclusive():
            if value <= self._read():
                return
            encoded = self._encode(value)
            if durable or not overwrite_private_file(self._path, encoded):
                write_private_file(self._path, encoded)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        lock_path = self._path.with_suffix(".lock")
        with self._lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _mac(self, value_bytes: bytes) -> bytes:
        message = self._name.encode() + b"\x00" + value_bytes
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _encode(self, value: int) -> bytes:
        value_bytes = value.to_bytes(8, "big")
        return bytes([_VERSION]) + value_bytes + self._mac(value_bytes)

    def _decode(self, data: bytes) -> int:
        if len(data) != 41 or data[0] != _VERSION:
            raise IntegrityError(f"monotonic counter {self._name!r} file is malformed")
        if not hmac.compare_digest(data[9:], self._mac(data[1:9])):
            raise IntegrityError(
                f"monotonic counter {self._name!r} failed authentication: its file was modified"
            )
        return int.from_bytes(data[1:9], "big")
