"""The encrypted baseline: same interface, contents hidden, access pattern visible."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from oram_store import DirectBlockStore, OramParams, Read, SqlBucketStore, Write
from otrace.errors import IntegrityError, InvalidRequest
from tee import Sealer
from tests.oram.helpers import KEY, STATE_KEY, TracingStore, block

MakeStore = Callable[..., SqlBucketStore]


def _direct(store: SqlBucketStore) -> DirectBlockStore:
    params = OramParams("d", blocks=32, block_size=64)
    return DirectBlockStore.create(store, params, key=KEY, sealer=Sealer.from_key(STATE_KEY))


def test_round_trip_and_reopen(store_url: str, make_store: MakeStore) -> None:
    direct = _direct(make_store(store_url))
    assert direct.access_batch([Write(3, block(3)), Read(3), Read(4)]) == [
        None,
        block(3),
        bytes(64),
    ]
    again = DirectBlockStore.open(direct.store, "d", key=KEY, sealer=Sealer.from_key(STATE_KEY))
    assert again.seq == 1
    assert again.access_batch([Read(3)]) == [block(3)]
    with pytest.raises(InvalidRequest, match=r"outside 0\.\.31"):
        again.access_batch([Read(32)])


def test_the_baseline_leaks_which_blocks_are_touched(
    sqlite_url: str, make_store: MakeStore
) -> None:
    store = make_store(sqlite_url, TracingStore)
    direct = _direct(store)
    direct.access_batch([Read(7)])
    direct.access_batch([Write(9, block(1))])
    assert store.trace.reads == [[7]]  # exactly the block read: what the ORAM hides
    assert [[idx for idx, _, _ in rows] for rows in store.trace.writes] == [[], [9]]
    assert all(block(1) not in blob for rows in store.trace.writes for *_, blob in rows)


def test_tampered_block_is_refused(sqlite_url: str, make_store: MakeStore) -> None:
    direct = _direct(make_store(sqlite_url))
    direct.access_batch([Write(1, block(1))])
    table = direct.store.bucket_table("d")  # type: ignore[attr-defined]
    with direct.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(table.update().where(table.c.idx == 1).values(blob=b"\0" * 92))
    with pytest.raises(IntegrityError, match="encrypted block 1 failed authentication"):
        direct.access_batch([Read(1)])


def test_altered_parameters_are_refused(sqlite_url: str, make_store: MakeStore) -> None:
    import sqlalchemy as sa

    direct = _direct(make_store(sqlite_url))
    mt = direct.store.meta_table  # type: ignore[attr-defined]
    with direct.store.engine.begin() as conn:  # type: ignore[attr-defined]
        (meta,) = conn.execute(sa.select(mt.c.meta)).one()
        conn.execute(mt.update().values(meta=bytes(meta).replace(b'"blocks":32', b'"blocks":33')))
    with pytest.raises(IntegrityError, match="ORAM metadata for 'd' was altered"):
        DirectBlockStore.open(direct.store, "d", key=KEY, sealer=Sealer.from_key(STATE_KEY))


def test_a_store_from_before_format_2_still_opens(store_url: str, make_store: MakeStore) -> None:
    params = OramParams("d", blocks=32, block_size=64, format=1)  # its metadata has no format
    sealer = Sealer.from_key(STATE_KEY)
    direct = DirectBlockStore.create(make_store(store_url), params, key=KEY, sealer=sealer)
    assert b'"format"' not in params.to_json()
    direct.access_batch([Write(5, block(5))])
    again = DirectBlockStore.open(direct.store, "d", key=KEY, sealer=sealer)
    assert again.params.format == 1
    assert again.access_batch([Read(5)]) == [block(5)]
