"""The enclave boundary seen from the host: keys never cross it, only declared ecalls exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import Node
from collector._enclave_app import NODE_SECRETS
from otrace.errors import InvalidRequest
from tee import SECURITY_VERSION, KmsClient, Platform, measure_code
from tee._encoding import encode_canonical
from tests.collector.conftest import node_settings, spans_of, stored
from tests.collector.otlp_helpers import grpc_export, request


def test_released_keys_never_cross_the_boundary(tmp_path: Path) -> None:
    frames: list[tuple[str, bytes]] = []
    settings = node_settings(tmp_path)
    node = Node(settings, audit=lambda direction, frame: frames.append((direction, frame)))
    node.start()
    try:
        assert node.grpc is not None and node.enclave is not None
        grpc_export(node.grpc.port, request(5, "boundary").SerializeToString())
        assert len(spans_of(stored(node))) == 5
        node.stats()
        assert node.enclave.ecalls == frozenset(
            {
                "ingest",
                "flush",
                "scan",
                "stats",
                "query_open",
                "query_call",
                "query_close",
                "issue_credential",
            }
        )
        with pytest.raises(InvalidRequest):
            node.enclave.call("read_keys")
        # Ask the KMS for the same secrets as the enclave (this test can attest:
        # the platform is emulated) and look for them in every audited frame.
        platform = Platform.open(settings.platform_dir)
        identity = platform.identity(measure_code(), SECURITY_VERSION)
        with KmsClient.connect(node.kms_target, kms_key=node.kms_key) as kms:
            secrets = kms.obtain_secrets(platform, identity, NODE_SECRETS)
    finally:
        node.stop()
    assert {d for d, _ in frames} == {"to_enclave", "from_enclave"}
    # The ORAM and state keys never cross. The index key (the analysts' search key)
    # crosses once, in the answer to issue_credential, which the node writes to the
    # analyst credential file; nothing else carries it.
    never = [secrets["oram_key"], secrets["state_key"]]
    assert not any(key in frame for _, frame in frames for key in never)
    carrying = [i for i, (_, frame) in enumerate(frames) if secrets["index_key"] in frame]
    assert len(carrying) == 1
    assert frames[carrying[0] - 1][1] == encode_canonical(["issue_credential", b"admin"])
