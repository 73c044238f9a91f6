"""The storage tampers, swaps and rolls back: every change is an IntegrityError, never data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from oram_store import PathOram, SqlBucketStore
from otrace.errors import IntegrityError, RollbackError
from tests.oram.helpers import MemoryCounter, block, new_oram, reopen

MakeStore = Callable[..., SqlBucketStore]


def _row(store: SqlBucketStore, idx: int) -> tuple[int, bytes]:
    table = store.bucket_table("t")
    with store.engine.connect() as conn:
        version, blob = conn.execute(
            sa.select(table.c.version, table.c.blob).where(table.c.idx == idx)
        ).one()
    return version, bytes(blob)


def _put(store: SqlBucketStore, idx: int, version: int, blob: bytes) -> None:
    table = store.bucket_table("t")
    with store.engine.begin() as conn:
        conn.execute(table.update().where(table.c.idx == idx).values(version=version, blob=blob))


def _filled(make_store: MakeStore, url: str, **kw: object) -> PathOram:
    oram = new_oram(make_store(url), blocks=64, cache_levels=0, **kw)  # type: ignore[arg-type]
    for b in range(64):
        oram.write(b, block(b))
    return oram


def _leaf_of_block(oram: PathOram, b: int) -> int:
    return (1 << oram.params.height) + oram.leaf_of(b)


def test_flipped_bit_in_a_bucket(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    target = _leaf_of_block(oram, 5) >> 1  # a bucket on block 5's path
    version, blob = _row(oram.store, target)  # type: ignore[arg-type]
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    _put(oram.store, target, version, bytes(flipped))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=f"ORAM bucket {target} failed authentication"):
        oram.read(5)


def test_flipped_bit_in_the_gcm_tag_or_nonce(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    for pos in (0, -1):  # nonce, tag: both covered by the parent's digest
        again = reopen(oram, cache_levels=0)
        version, blob = _row(oram.store, 1)  # type: ignore[arg-type]
        bad = bytearray(blob)
        bad[pos] ^= 0x80
        _put(oram.store, 1, version, bytes(bad))  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match="does not match its parent's digest"):
            again.read(0)
        _put(oram.store, 1, version, blob)  # type: ignore[arg-type]


def test_swapped_sibling_buckets(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    leaf = _leaf_of_block(oram, 9)
    sibling = leaf ^ 1
    a, b = _row(oram.store, leaf), _row(oram.store, sibling)  # type: ignore[arg-type]
    _put(oram.store, leaf, *b)  # type: ignore[arg-type]
    _put(oram.store, sibling, *a)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=f"ORAM bucket {leaf} does not match"):
        oram.read(9)


def test_older_copy_of_a_bucket_put_back(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    old = _row(oram.store, 1)  # type: ignore[arg-type]  # the root: on every path
    oram.write(3, block(300))
    assert _row(oram.store, 1) != old  # type: ignore[arg-type]
    _put(oram.store, 1, *old)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="ORAM bucket 1 does not match its parent's digest"):
        oram.read(3)


def test_old_bucket_with_its_version_relabelled(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    _old_version, old_blob = _row(oram.store, 1)  # type: ignore[arg-type]
    oram.write(3, block(300))
    version, _ = _row(oram.store, 1)  # type: ignore[arg-type]
    _put(oram.store, 1, version, old_blob)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="ORAM bucket 1 does not match"):
        oram.read(3)


def test_deleted_bucket(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    leaf = _leaf_of_block(oram, 2)
    table = oram.store.bucket_table("t")  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(table.delete().where(table.c.idx == leaf))
    with pytest.raises(IntegrityError, match=f"ORAM bucket {leaf} is missing from storage"):
        oram.read(2)


def test_tampering_off_the_accessed_path_is_found_by_audit(
    store_url: str, make_store: MakeStore
) -> None:
    oram = _filled(make_store, store_url)
    leaf = (1 << oram.params.height) + 3
    version, blob = _row(oram.store, leaf)  # type: ignore[arg-type]
    _put(oram.store, leaf, version, blob[:-1] + bytes([blob[-1] ^ 1]))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=f"ORAM bucket {leaf}"):
        oram.audit()


def test_tampered_state_record_refuses_to_open(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    st = oram.store.state_table  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        seq, blob = conn.execute(sa.select(st.c.seq, st.c.blob).order_by(st.c.seq.desc())).first()
        bad = bytearray(blob)
        bad[40] ^= 1
        conn.execute(st.update().where(st.c.seq == seq).values(blob=bytes(bad)))
    with pytest.raises(IntegrityError, match=r"sealed state record \d+ failed authentication"):
        reopen(oram)


def test_state_records_swapped_between_slots(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    oram.write(0, block(0))  # 64 writes end on a checkpoint: add deltas after it
    oram.write(1, block(1))
    st = oram.store.state_table  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(sa.select(st.c.seq, st.c.blob).order_by(st.c.seq.desc()).limit(2)).all()
        (s1, b1), (s2, b2) = rows
        conn.execute(st.update().where(st.c.seq == s1).values(blob=b2))
        conn.execute(st.update().where(st.c.seq == s2).values(blob=b1))
    with pytest.raises(IntegrityError, match=r"sealed state record \d+ failed authentication"):
        reopen(oram)


def test_truncated_state_is_a_rollback(store_url: str, make_store: MakeStore) -> None:
    counter = MemoryCounter()
    oram = _filled(make_store, store_url, counter=counter)
    oram.write(0, block(0))  # a delta after the checkpoint at 64
    st = oram.store.state_table  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(st.delete().where(st.c.seq == oram.seq))
    with pytest.raises(
        RollbackError, match=f"at commit {oram.seq - 1} but the monotonic counter says {oram.seq}"
    ):
        reopen(oram, counter=counter)
    # Without the counter the dropped record still cannot be used to serve stale
    # data: the older root no longer matches the tree.
    with pytest.raises(IntegrityError, match="does not match its parent's digest"):
        again = reopen(oram, cache_levels=0)
        for b in range(64):
            again.read(b)


def test_whole_database_restored_to_an_older_copy(tmp_path: Path, make_store: MakeStore) -> None:
    db = tmp_path / "store.sqlite"
    counter = MemoryCounter()
    oram = _filled(make_store, f"sqlite:///{db}", counter=counter)
    oram.store.close()
    shutil.copy(db, tmp_path / "backup.sqlite")
    newer = reopen(oram, counter=counter)
    newer.write(1, block(1000))
    newer.store.close()
    shutil.copy(tmp_path / "backup.sqlite", db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    stale_store = make_store(f"sqlite:///{db}")
    with pytest.raises(RollbackError, match="restored to an older copy"):
        PathOram.open(
            stale_store, "t", key=b"\0" * 32, sealer=oram._states._sealer, counter=counter
        )  # type: ignore[attr-defined]


def test_altered_parameters_are_refused(store_url: str, make_store: MakeStore) -> None:
    oram = _filled(make_store, store_url)
    mt = oram.store.meta_table  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        (meta,) = conn.execute(sa.select(mt.c.meta)).one()
        conn.execute(mt.update().values(meta=bytes(meta).replace(b'"blocks":64', b'"blocks":65')))
    with pytest.raises(IntegrityError, match="ORAM metadata for 't' was altered"):
        reopen(oram)


def test_wrong_keys_cannot_read(store_url: str, make_store: MakeStore) -> None:
    from tee import Sealer

    oram = _filled(make_store, store_url)
    with pytest.raises(IntegrityError):
        PathOram.open(oram.store, "t", key=bytes(32), sealer=Sealer.from_key(bytes(32)))
    good_sealer = oram._states._sealer  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        again = PathOram.open(oram.store, "t", key=bytes(32), sealer=good_sealer)
        again.read(0)
