"""The emulated platform: created once with private permissions, refused when loosened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otrace.errors import ConfigError
from tee import Platform


def test_created_on_first_use_with_private_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "platform"
    Platform.open(directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    for name in ("root.key", "attestation.key", "signer.key"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600


def test_reopening_keeps_the_same_keys(tmp_path: Path) -> None:
    first = Platform.open(tmp_path / "p")
    second = Platform.open(tmp_path / "p")
    assert first.attestation_public_key == second.attestation_public_key
    assert first.derive_key(b"x") == second.derive_key(b"x")
    assert Platform.open(tmp_path / "q").derive_key(b"x") != first.derive_key(b"x")


def test_loose_file_permissions_are_refused_with_the_fix(tmp_path: Path) -> None:
    Platform.open(tmp_path / "p")
    os.chmod(tmp_path / "p" / "root.key", 0o644)
    with pytest.raises(ConfigError, match=r"readable or writable by other users .*chmod 600"):
        Platform.open(tmp_path / "p")


def test_loose_directory_permissions_are_refused_with_the_fix(tmp_path: Path) -> None:
    Platform.open(tmp_path / "p")
    os.chmod(tmp_path / "p", 0o755)
    with pytest.raises(ConfigError, match=r"accessible by other users .*chmod 700"):
        Platform.open(tmp_path / "p")


def test_wrong_sized_secret_is_refused(tmp_path: Path) -> None:
    Platform.open(tmp_path / "p")
    (tmp_path / "p" / "root.key").write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"must hold exactly 32 bytes"):
        Platform.open(tmp_path / "p")


def test_repr_shows_no_secret() -> None:
    platform = Platform.from_secrets(b"\x11" * 32, b"\x22" * 32, b"\x33" * 32)
    assert "1111" not in repr(platform) and "2222" not in repr(platform)
