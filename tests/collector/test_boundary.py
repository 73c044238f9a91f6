"""The enclave boundary seen from the host: keys never cross it, only declared ecalls exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import Node
from collector._enclave_app import NODE_SECRETS
from otrace.errors import InvalidRequest
from tee import SECURITY_VERSION, KmsClient, Platform, measure_code
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
        assert node.enclave.ecalls == frozenset({"ingest", "flush", "scan", "stats"})
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
    for _, frame in frames:
        assert not any(key in frame for key in secrets.values())
