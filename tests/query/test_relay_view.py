"""What the host relaying a query session sees: handshake values and sealed records.

The adversary here is the collector host itself (or anything between the
analyst and the enclave): a recording relay stands in for the node's own and
keeps every byte crossing it in both directions. Queries through it must work,
and none of the plaintexts they carry (service names, span names, attribute
keys and values, trace ids raw or hex) may appear in what it saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from query import QueryClient
from query._server import QueryServer
from tests.query.conftest import MS, Loaded


@pytest.fixture
def relay(loaded: Loaded) -> Iterator[tuple[QueryServer, list[bytes]]]:
    seen: list[bytes] = []
    call = loaded.node.enclave.call

    def recording(name: str, payload: bytes) -> bytes:
        seen.append(payload)
        reply = call(name, payload)
        seen.append(reply)
        return reply

    server = QueryServer(recording, "127.0.0.1:0")
    try:
        yield server, seen
    finally:
        server.stop()


def test_the_relay_sees_no_query_or_answer_plaintext(
    loaded: Loaded, relay: tuple[QueryServer, list[bytes]]
) -> None:
    server, seen = relay
    tid = loaded.slow_trace
    with QueryClient.connect(
        f"127.0.0.1:{server.port}", key_file=loaded.node.credential_path
    ) as client:
        trace = client.fetch_trace(tid)
        hits = client.search(
            service="checkout",
            name="GET /cart",
            attributes=[("http.status_code", "500")],
            min_duration_ns=500 * MS,
            start_ns=loaded.now - 3600 * 10**9,
            end_ns=loaded.now + 10**9,
        )
        services = client.services()
        operations = client.operations("checkout")

    # The answers are real, so the plaintexts did cross the relay (sealed).
    answer = trace.data.SerializeToString() + hits.data.SerializeToString()
    plain = [b"checkout", b"GET /cart", b"SELECT cart", b"http.status_code", tid]
    assert all(s in answer for s in plain)
    secrets = [*plain, tid.hex().encode(), b"svc:checkout", b"attr:http.status_code=500"]
    assert "checkout" in services and "GET /cart" in operations
    assert seen and sum(map(len, seen)) > len(answer)

    relayed = b"\x00".join(seen)
    leaked = [s for s in secrets if s in relayed]
    assert leaked == [], f"the relay saw plaintext: {leaked}"
