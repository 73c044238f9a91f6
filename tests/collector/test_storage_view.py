"""What the untrusted storage holds after ingest: no plaintext, fixed sizes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from collector import Node
from collector._journal import size_class
from tests.collector.conftest import spans_of, stored
from tests.collector.otlp_helpers import grpc_export, request

SECRET_SERVICE = "payments-secret-svc"
SECRET_VALUE = "card=4111111111111111"


def _files(data_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()]


def test_storage_never_sees_plaintext(node: Node) -> None:
    assert node.grpc is not None
    trace_id = os.urandom(16)
    req = request(6, SECRET_SERVICE, trace_id=trace_id)
    for span in req.resource_spans[0].scope_spans[0].spans:
        span.attributes.add(key="payment").value.string_value = SECRET_VALUE
    grpc_export(node.grpc.port, req.SerializeToString())
    # Before the epoch (journal only) and after it (ORAM), nothing readable on disk.
    markers = [SECRET_SERVICE.encode(), SECRET_VALUE.encode(), trace_id, trace_id.hex().encode()]
    for blob in _files(node.settings.data_dir):
        assert not any(m in blob for m in markers)
    assert len(spans_of(stored(node))) == 6
    for blob in _files(node.settings.data_dir):
        assert not any(m in blob for m in markers)


def test_rows_have_fixed_or_classed_sizes(node: Node) -> None:
    assert node.grpc is not None
    for n in (1, 7, 40):
        grpc_export(node.grpc.port, request(n).SerializeToString())
    data = node.settings.data_dir
    with sqlite3.connect(data / "journal.sqlite") as conn:
        sizes = [n for (n,) in conn.execute("SELECT length(blob) FROM ingest_journal")]
    # nonce + tag around a power-of-two class
    assert sizes and all((s - 28) in {size_class(x) for x in range(1 << 16)} for s in sizes)
    node.flush()
    with sqlite3.connect(data / "otrace.sqlite") as conn:
        blob_sizes = {n for (n,) in conn.execute("SELECT DISTINCT length(blob) FROM oram_spans")}
        aux = dict(conn.execute("SELECT name, length(blob) FROM oram_aux"))
        edb_sizes = {n for (n,) in conn.execute("SELECT DISTINCT length(value) FROM edb_spans")}
    assert len(blob_sizes) == 1
    assert set(aux) == {"ingest", "index"}
    # The sealed index state is padded to a power of two of at least 4 KiB; EDB buckets
    # (nonce + tag around a padded plaintext) to powers of two of at least 256 bytes.
    sealed_overhead = aux["index"] - 4096
    assert 0 < sealed_overhead < 100
    assert edb_sizes and all(((s - 28) & (s - 29)) == 0 and s - 28 >= 256 for s in edb_sizes)


def test_an_older_ingest_state_put_back_is_refused(tmp_path: Path) -> None:
    import pytest

    from otrace.errors import IntegrityError
    from tests.collector.conftest import node_settings

    settings = node_settings(tmp_path)
    db = settings.data_dir / "otrace.sqlite"
    node = Node(settings)
    node.start()
    try:
        assert node.grpc is not None
        grpc_export(node.grpc.port, request(2).SerializeToString())
        node.flush()
        with sqlite3.connect(db) as conn:
            (old,) = conn.execute("SELECT blob FROM oram_aux WHERE name = 'ingest'").fetchone()
        grpc_export(node.grpc.port, request(2).SerializeToString())
        node.flush()
    finally:
        node.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE oram_aux SET blob = ? WHERE name = 'ingest'", (old,))
    again = Node(settings)
    with pytest.raises(IntegrityError, match="sealed ingest state does not belong"):
        again.start()
    again.stop()


def test_missing_journal_entries_stop_the_epoch_with_a_clear_error(tmp_path: Path) -> None:
    from collector._ingest import IngestEngine
    from collector._journal import Journal
    from oram_store import OramParams, PathOram, SqlBucketStore
    from otrace.errors import IntegrityError
    from query import EdbCodec, Indexer
    from tee import Sealer

    sealer = Sealer.from_key(bytes(32))
    store = SqlBucketStore(f"sqlite:///{tmp_path / 'o.sqlite'}")
    oram = PathOram.create(
        store,
        OramParams("spans", blocks=64, batch_size=2),
        key=bytes(32),
        sealer=sealer,
        cache_levels=2,
    )
    journal = Journal.sqlite(str(tmp_path / "j.sqlite"), bytes(range(32)))
    indexer = Indexer(bytes(32), EdbCodec(bytes(range(32))))
    engine = IngestEngine(oram, journal, sealer, indexer=indexer)
    try:
        engine.ingest([("application/x-protobuf", request(40).SerializeToString())] * 3)
        with sqlite3.connect(tmp_path / "j.sqlite") as conn:
            conn.execute("DELETE FROM ingest_journal WHERE seq = 2")
        with pytest.raises(IntegrityError, match="ingest journal entry 2 is missing"):
            engine.drain_once()
        assert engine.state.watermark == 0  # nothing was committed past the hole
    finally:
        journal.close()
        store.close()
