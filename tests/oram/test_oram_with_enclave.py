"""The ORAM with the enclave's own parts: a measurement-bound sealer and the platform counter."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from oram_store import OramParams, PathOram, SqlBucketStore
from otrace.errors import IntegrityError, RollbackError
from tee import MonotonicCounter, Platform, Sealer
from tests.oram.helpers import KEY, block

MakeStore = Callable[..., SqlBucketStore]


def _open(store: SqlBucketStore, platform: Platform, measurement: bytes) -> PathOram:
    identity = platform.identity(measurement, 1)
    return PathOram.open(
        store,
        "spans",
        key=KEY,
        sealer=Sealer.for_enclave(platform, identity),
        counter=MonotonicCounter(platform, "oram-spans"),
    )


def test_database_rollback_is_caught_by_the_platform_counter(
    tmp_path: Path, make_store: MakeStore
) -> None:
    platform = Platform.open(tmp_path / "platform")
    measurement = bytes(range(32))
    db = tmp_path / "data" / "otrace.sqlite"
    db.parent.mkdir()
    store = make_store(f"sqlite:///{db}")
    oram = PathOram.create(
        store,
        OramParams("spans", blocks=64, block_size=64),
        key=KEY,
        sealer=Sealer.for_enclave(platform, platform.identity(measurement, 1)),
        counter=MonotonicCounter(platform, "oram-spans"),
    )
    oram.write(1, block(1))
    store.close()
    shutil.copytree(db.parent, tmp_path / "backup")

    oram = _open(make_store(f"sqlite:///{db}"), platform, measurement)
    oram.write(1, block(2))
    oram.store.close()

    shutil.rmtree(db.parent)
    shutil.copytree(tmp_path / "backup", db.parent)
    with pytest.raises(RollbackError, match="at commit 1 but the monotonic counter says 2"):
        _open(make_store(f"sqlite:///{db}"), platform, measurement)


def test_state_sealed_by_one_enclave_cannot_be_opened_by_another(
    tmp_path: Path, make_store: MakeStore
) -> None:
    platform = Platform.open(tmp_path / "platform")
    store = make_store(f"sqlite:///{tmp_path / 'otrace.sqlite'}")
    PathOram.create(
        store,
        OramParams("spans", blocks=64, block_size=64),
        key=KEY,
        sealer=Sealer.for_enclave(platform, platform.identity(b"\x01" * 32, 1)),
    )
    with pytest.raises(IntegrityError):
        _open(store, platform, b"\x02" * 32)
