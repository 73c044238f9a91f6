"""The block device's geometry is fixed at creation (`collector._enclave_app.open_device`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector._enclave_app import EnclaveConfig, open_device
from oram_store import DEFAULT_BLOCK_SIZE, SqlBucketStore
from otrace.errors import ConfigError
from tee import Sealer

KEY = bytes(range(32))
SEALER = Sealer.from_key(bytes(32))


def _open(path: Path, storage: str, **fields: int) -> tuple[int, int]:
    geometry = {"blocks": 256, "batch": 4} | fields
    config = EnclaveConfig(
        store_url="", journal_path="", platform_dir="", kms_target="", kms_key=b"",
        storage=storage, **geometry,
    )  # fmt: skip
    store = SqlBucketStore(f"sqlite:///{path}")
    try:
        device = open_device(config, KEY, SEALER, None, store=store)  # type: ignore[arg-type]
        return device.params.blocks, device.params.block_size
    finally:
        store.close()


@pytest.mark.parametrize("storage", ["oram", "encrypted"])
def test_an_unset_block_size_is_the_default_for_a_new_store_and_the_stores_own_after(
    tmp_path: Path, storage: str
) -> None:
    assert _open(tmp_path / "new.db", storage) == (256, DEFAULT_BLOCK_SIZE)
    # A store made with another size (the default before 4048 was 4096) still opens.
    assert _open(tmp_path / "old.db", storage, block_size=4096) == (256, 4096)
    assert _open(tmp_path / "old.db", storage) == (256, 4096)


def test_a_block_size_or_capacity_other_than_the_stores_is_refused(tmp_path: Path) -> None:
    _open(tmp_path / "t.db", "oram", block_size=4096)
    with pytest.raises(ConfigError, match="holds 256 blocks of 4096 B, but 256 of 1024 B"):
        _open(tmp_path / "t.db", "oram", block_size=1024)
    with pytest.raises(ConfigError, match="keep the settings the data directory was created"):
        _open(tmp_path / "t.db", "oram", blocks=512)
