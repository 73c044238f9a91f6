"""The query API end to end: a real node, an attested session, trapdoors, OTLP answers."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from otrace.errors import AttestationError, AuthenticationError, ConfigError, UnavailableError
from query import AnalystCredential, QueryClient
from tests.query.conftest import MS, Loaded


def _spans(answer_data: object) -> list[tuple[bytes, str]]:
    out = []
    for rs in answer_data.resource_spans:  # type: ignore[attr-defined]
        for ss in rs.scope_spans:
            out += [(s.trace_id, s.name) for s in ss.spans]
    return out


def _client(loaded: Loaded, **kw: object) -> QueryClient:
    return QueryClient.connect(loaded.endpoint, key_file=loaded.node.credential_path, **kw)  # type: ignore[arg-type]


def test_get_trace_returns_every_span_of_that_trace_only(loaded: Loaded) -> None:
    with _client(loaded) as client:
        for tid in list(loaded.traces)[:5]:
            answer = client.fetch_trace(tid)
            spans = _spans(answer.data)
            assert {t for t, _ in spans} == {tid}
            assert sorted(n for _, n in spans) == ["GET /cart", "SELECT cart", "cache get"]
            assert answer.reads == 4 and not answer.truncated
        missing = client.fetch_trace(b"\x42" * 16)
        assert _spans(missing.data) == [] and missing.reads == 4


def test_search_combines_service_name_attribute_and_duration(loaded: Loaded) -> None:
    now = loaded.now
    with _client(loaded) as client:
        hit = client.search(
            service="checkout",
            attributes=[("http.status_code", "500")],
            min_duration_ns=500 * MS,
            start_ns=now - 3600 * 10**9,
            end_ns=now,
        )
        assert {t for t, _ in _spans(hit.data)} == {loaded.slow_trace}
        assert len(_spans(hit.data)) == 3  # the whole trace, not only the matching span
        assert hit.reads == 16
        # Each predicate alone is not enough: wrong service, status or duration.
        for miss in (
            {"service": "cart", "attributes": [("http.status_code", "500")]},
            {"service": "checkout", "attributes": [("http.status_code", "404")]},
            {"service": "checkout", "min_duration_ns": 950 * MS},
            {"service": "checkout", "name": "GET /cart", "max_duration_ns": 10 * MS},
        ):
            assert _spans(client.search(**miss, start_ns=now - 3600 * 10**9, end_ns=now).data) == []  # type: ignore[arg-type]


def test_search_honours_the_time_range_and_the_limit(loaded: Loaded) -> None:
    now = loaded.now
    with _client(loaded) as client:
        # payments traces start at now - i s for i = 2, 5, 8, ...
        recent = client.search(service="payments", start_ns=now - 6 * 10**9, end_ns=now)
        assert len({t for t, _ in _spans(recent.data)}) == 2
        limited = client.search(service="cart", limit=3, start_ns=now - 3600 * 10**9, end_ns=now)
        assert len({t for t, _ in _spans(limited.data)}) == 3
        assert not limited.truncated


def test_a_search_beyond_the_read_budget_says_it_is_truncated(loaded: Loaded) -> None:
    now = loaded.now
    with _client(loaded) as client:
        everything = client.search(limit=1000, start_ns=now - 3600 * 10**9, end_ns=now)
    found = {t for t, _ in _spans(everything.data)}
    assert found <= set(loaded.traces)
    # 31 traces x 3 spans are spread over more blocks than 8 reads when the blocks are small;
    # whether or not that happens here, the flag must match what was returned.
    assert everything.truncated == (len(found) < len(loaded.traces))


def test_services_and_operations(loaded: Loaded) -> None:
    with _client(loaded) as client:
        assert client.services() == ["cart", "checkout", "payments"]
        assert client.operations("cart") == ["GET /cart", "SELECT cart", "cache get"]
        assert client.operations("nope") == []


def test_a_wrong_credential_is_refused(loaded: Loaded, tmp_path: Path) -> None:
    cred = AnalystCredential.load(loaded.node.credential_path)
    forged = tmp_path / "forged.cred"
    AnalystCredential(
        cred.name, cred.index_key, b"\x00" * 32, cred.platform_key, cred.measurements
    ).save(forged)
    with pytest.raises(AuthenticationError, match="refused the analyst credential"):
        QueryClient.connect(loaded.endpoint, key_file=forged)
    renamed = tmp_path / "renamed.cred"
    AnalystCredential(
        "mallory", cred.index_key, cred.auth_key, cred.platform_key, cred.measurements
    ).save(renamed)
    with pytest.raises(AuthenticationError):
        QueryClient.connect(loaded.endpoint, key_file=renamed)


def test_a_node_measurement_not_allowed_is_refused(loaded: Loaded) -> None:
    with pytest.raises(AttestationError, match=r"failed attestation.*--measurement"):
        _client(loaded, measurements=[b"\x11" * 32])


def test_an_untrusted_platform_is_refused(loaded: Loaded, tmp_path: Path) -> None:
    cred = AnalystCredential.load(loaded.node.credential_path)
    other = tmp_path / "other.cred"
    AnalystCredential(
        cred.name, cred.index_key, cred.auth_key, b"\x5a" * 32, cred.measurements
    ).save(other)
    with pytest.raises(AttestationError):
        QueryClient.connect(loaded.endpoint, key_file=other)


def test_unknown_node_and_missing_credential_say_what_to_do(loaded: Loaded, tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match=r"no otrace node answers at 127\.0\.0\.1:9"):
        QueryClient.connect("127.0.0.1:9", key_file=loaded.node.credential_path)
    with pytest.raises(ConfigError, match=r"otrace serve.*writes one"):
        QueryClient.connect(loaded.endpoint, key_file=tmp_path / "none.cred")
    loose = tmp_path / "loose.cred"
    shutil.copy(loaded.node.credential_path, loose)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        QueryClient.connect(loaded.endpoint, key_file=loose)


def test_the_credential_file_is_private(loaded: Loaded) -> None:
    assert loaded.node.credential_path.stat().st_mode & 0o777 == 0o600


def test_retention_and_unindexed_attributes(tmp_path: Path) -> None:
    from collector import Node
    from tests.collector.conftest import node_settings
    from tests.collector.otlp_helpers import grpc_export
    from tests.query.conftest import trace_request

    node = Node(node_settings(tmp_path, retention=3600, unindexed_attributes="http.status_code, x"))
    node.start()
    try:
        assert node.grpc is not None and node.query is not None
        now = time.time_ns()
        old, req = trace_request("archive", now - 2 * 3600 * 10**9, 5)
        grpc_export(node.grpc.port, req.SerializeToString())
        node.flush()  # its own epoch: a segment wholly past the retention, dropped at once
        new, req = trace_request("archive", now, 5)
        grpc_export(node.grpc.port, req.SerializeToString())
        node.flush()
        endpoint = f"127.0.0.1:{node.query.port}"
        with QueryClient.connect(endpoint, key_file=node.credential_path) as client:
            assert _spans(client.fetch_trace(old).data) == []
            got = client.fetch_trace(new).data
            assert len(_spans(got)) == 3
            # Stored and returned, but not searchable: the operator chose not to index it.
            root = next(
                s
                for rs in got.resource_spans
                for s in rs.scope_spans[0].spans
                if s.name == "GET /cart"
            )
            assert [kv.key for kv in root.attributes] == ["http.status_code"]
            by_attr = client.search(attributes=[("http.status_code", "200")], start_ns=now - 10**10)
            assert _spans(by_attr.data) == []
            assert len(_spans(client.search(service="archive", start_ns=now - 10**10).data)) == 3
    finally:
        node.stop()
