"""Monotonic counters: never go down, survive reopening, detect edits of their file."""

from __future__ import annotations

import pytest

from otrace.errors import ConfigError, IntegrityError
from tee import FreshnessCounter, MonotonicCounter, Platform


def test_new_counter_is_zero_and_only_moves_up(platform: Platform) -> None:
    counter: FreshnessCounter = MonotonicCounter(platform, "tree-1")
    assert counter.current() == 0
    counter.advance(5)
    counter.advance(3)
    assert counter.current() == 5
    counter.advance(9)
    assert counter.current() == 9


def test_survives_reopen_of_the_platform(platform: Platform) -> None:
    MonotonicCounter(platform, "tree-1").advance(42)
    reopened = Platform.open(platform.directory)
    assert MonotonicCounter(reopened, "tree-1").current() == 42
    assert MonotonicCounter(reopened, "tree-2").current() == 0


def test_an_unsynced_advance_is_written_in_place_without_fsync(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    MonotonicCounter(platform, "tree-1").advance(5, durable=False)
    assert len(synced) == 2  # a new file is always written durably: the file, its directory
    MonotonicCounter(platform, "tree-1").advance(6, durable=False)
    assert len(synced) == 2  # in place, no fsync
    assert MonotonicCounter(platform, "tree-1").current() == 6
    MonotonicCounter(platform, "tree-1").advance(7)
    assert len(synced) == 4
    reopened = Platform.open(platform.directory)
    assert MonotonicCounter(reopened, "tree-1").current() == 7
    MonotonicCounter(reopened, "tree-1").advance(8, durable=False)
    assert MonotonicCounter(Platform.open(platform.directory), "tree-1").current() == 8


def test_editing_the_file_is_detected(platform: Platform) -> None:
    counter = MonotonicCounter(platform, "tree-1")
    counter.advance(7)
    path = platform.directory / "counters" / "tree-1.ctr"
    data = bytearray(path.read_bytes())
    data[8] = 99  # low byte of the value
    path.write_bytes(bytes(data))
    with pytest.raises(
        IntegrityError, match=r"'tree-1' failed authentication: its file was modified"
    ):
        counter.current()


def test_copying_another_counters_file_is_detected(platform: Platform) -> None:
    MonotonicCounter(platform, "a").advance(1)
    MonotonicCounter(platform, "b").advance(100)
    counters = platform.directory / "counters"
    (counters / "a.ctr").write_bytes((counters / "b.ctr").read_bytes())
    with pytest.raises(IntegrityError, match=r"failed authentication"):
        MonotonicCounter(platform, "a").current()


def test_truncated_file_is_detected(platform: Platform) -> None:
    MonotonicCounter(platform, "a").advance(1)
    (platform.directory / "counters" / "a.ctr").write_bytes(b"\x01\x00")
    with pytest.raises(IntegrityError, match=r"'a' file is malformed"):
        MonotonicCounter(platform, "a").current()


def test_another_platform_cannot_forge_a_value(platform: Platform, tmp_path) -> None:
    other = Platform.open(tmp_path / "other")
    MonotonicCounter(other, "a").advance(1000)
    MonotonicCounter(platform, "a").advance(1)
    src = other.directory / "counters" / "a.ctr"
    (platform.directory / "counters" / "a.ctr").write_bytes(src.read_bytes())
    with pytest.raises(IntegrityError):
        MonotonicCounter(platform, "a").current()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_bad_names_are_refused(platform: Platform, name: str) -> None:
    with pytest.raises(ConfigError, match=r"counter name"):
        MonotonicCounter(platform, name)


@pytest.mark.parametrize("value", [-1, 2**64, True])
def test_bad_values_are_refused(platform: Platform, value: int) -> None:
    with pytest.raises(ConfigError, match=r"counter value"):
        MonotonicCounter(platform, "a").advance(value)
