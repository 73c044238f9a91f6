"""A chain's spans in a real node: one trace, and only from attested producers when required.

Every role exports through the real OpenTelemetry SDK and OTLP/gRPC exporter
to a real node; the spans are read back with `node.scan()`, and the chain's
trace through `otrace trace` (the attested query API).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from collector import Node
from otrace.cli import cli
from otrace.errors import AttestationError, PolicyError
from otrace.faas import (
    attested_tracer_provider,
    gateway_measurement,
    obtain_producer_credentials,
    otlp_tracer_provider,
)
from tee import SECURITY_VERSION, KmsPolicy, Platform, ProducerCa, report_data_for
from tests.collector.conftest import node_settings, running, spans_of, stored
from tests.collector.test_tls import _issue, _write
from tests.faas.chain_functions import CHAIN, refund
from tests.faas.conftest import build_chain
from tests.faas.test_chain import ORDER

ROLES = ["gateway", *(f.name for f in CHAIN)]


def _check_one_trace(node: Node) -> None:
    spans = spans_of(stored(node))
    by_name = {span[3]: span for span in spans}
    assert {s[0] for s in spans} == {by_name["chain shop"][0]}, "not one trace"
    root = by_name["chain shop"]
    assert root[2] == ""
    parent = root
    for name in ("faas validate", "faas price", "faas notify"):
        assert by_name[name][2] == parent[1], f"{name} is not a child of {parent[3]}"
        parent = by_name[name]
    assert by_name["validate.check"][2] == by_name["faas validate"][1]
    assert {s[4] for s in spans} == set(ROLES)


def _shutdown(providers: dict[str, TracerProvider]) -> None:
    for provider in providers.values():
        provider.force_flush()
        provider.shutdown()


def test_chain_spans_form_one_trace(tmp_path: Path) -> None:
    with running(node_settings(tmp_path)) as node:
        assert node.grpc is not None
        endpoint = f"127.0.0.1:{node.grpc.port}"
        providers = {role: otlp_tracer_provider(role, endpoint, batch=False) for role in ROLES}
        chain = build_chain(tmp_path, providers=providers)
        assert chain.gateway.invoke(ORDER)["total"] == 12
        _shutdown(providers)
        _check_one_trace(node)
        _check_otrace_trace(node)


def _check_otrace_trace(node: Node) -> None:
    """`otrace trace TRACE_ID --json` returns the whole chain as one OTLP/JSON trace."""
    assert node.query is not None
    spans = spans_of(stored(node))
    trace_id = spans[0][0]
    args = ["trace", trace_id, "--json", "--endpoint", f"127.0.0.1:{node.query.port}",
            "--key-file", str(node.credential_path)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = [
        (s["traceId"], s["name"])
        for rs in json.loads(result.output)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    ]
    assert {t for t, _ in got} == {trace_id}
    assert sorted(n for _, n in got) == sorted(s[3] for s in spans)


@pytest.fixture
def server_pki(tmp_path: Path) -> tuple[Path, Path, bytes]:
    ca = _issue("test server CA", None)
    server = _issue(
        "otrace node",
        ca,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    identity = _write(tmp_path, "server", *server)
    return identity.cert, identity.key, ca[0].public_bytes(serialization.Encoding.PEM)


def _export_one(endpoint: str, credentials: grpc.ChannelCredentials) -> SpanExportResult:
    provider = TracerProvider()
    results: list[SpanExportResult] = []
    exporter = OTLPSpanExporter(endpoint=endpoint, credentials=credentials, timeout=1)

    class Recording(SimpleSpanProcessor):
        def on_end(self, span: object) -> None:
            results.append(exporter.export([span]))  # type: ignore[list-item]

    provider.add_span_processor(Recording(exporter))
    provider.get_tracer("injector").start_span("injected").end()
    provider.shutdown()
    return results[0]


def test_require_attested_producers(tmp_path: Path, server_pki: tuple[Path, Path, bytes]) -> None:
    cert, key, server_ca = server_pki
    settings = node_settings(
        tmp_path, tls_cert=str(cert), tls_key=str(key), require_attested_producers=True
    )
    with running(settings) as node:
        assert node.grpc is not None
        endpoint = f"localhost:{node.grpc.port}"
        platform = Platform.open(tmp_path / "platform")
        # Unattested injection: no client certificate, or one from another CA.
        assert (
            _export_one(endpoint, grpc.ssl_channel_credentials(server_ca))
            is SpanExportResult.FAILURE
        )
        stranger_ca = _issue("stranger CA", None)
        stranger = _issue("validate", stranger_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        stranger_creds = grpc.ssl_channel_credentials(
            server_ca,
            private_key=stranger[1].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate_chain=stranger[0].public_bytes(serialization.Encoding.PEM),
        )
        assert _export_one(endpoint, stranger_creds) is SpanExportResult.FAILURE

        # The CA follows the policy of a KMS that admits the chain's measurements.
        policy_chain = build_chain(tmp_path, platform=platform)
        ca = ProducerCa(platform, policy=lambda: _policy(policy_chain.kms.policy()))
        measurements = {f.name: f.measurement for f in CHAIN} | {"gateway": gateway_measurement()}
        providers = {
            role: attested_tracer_provider(
                role,
                endpoint,
                ca=ca,
                server_ca_pem=server_ca,
                platform=platform,
                identity=platform.identity(measurements[role], SECURITY_VERSION),
                batch=False,
            )
            for role in ROLES
        }
        chain = build_chain(tmp_path / "run", platform=platform, providers=providers)
        assert chain.gateway.invoke(ORDER)["total"] == 12
        _shutdown(providers)
        _check_one_trace(node)

        # The CA refuses an enclave the policy does not admit, and a quote for another key.
        with pytest.raises(AttestationError, match="not allow-listed"):
            obtain_producer_credentials(
                ca, platform, platform.identity(refund.measurement, SECURITY_VERSION), "refund"
            )
        key_pair = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key_pair, hashes.SHA256())
        )
        nonce = ca.challenge()
        identity = platform.identity(measurements["price"], SECURITY_VERSION)
        quote = platform.quote(identity, report_data_for(b"another key", nonce))
        with pytest.raises(AttestationError, match="report data"):
            ca.issue(quote.to_bytes(), csr.public_bytes(serialization.Encoding.PEM), nonce)


def _policy(signed: object) -> KmsPolicy | None:
    if signed is None:
        raise PolicyError("no policy")
    return signed.parsed()  # type: ignore[attr-defined,no-any-return]
