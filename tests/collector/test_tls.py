"""TLS and mTLS on both OTLP receivers, with a throwaway CA and the real SDK exporters.

The CA, the server certificate (SAN 127.0.0.1 and localhost), a client
certificate, and a client certificate from a second, untrusted CA are made
with `cryptography` once per module. Every client is the Python SDK's gRPC or
HTTP exporter configured only through OTEL_EXPORTER_OTLP_* variables. A
refused one must exit 1 (its export failed) and store nothing, while a client
configured right, on the same node, gets every span stored. Bad TLS files
stop `Node.start` with a ConfigError before anything runs.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector import Node
from otrace.errors import ConfigError
from tests.collector.conftest import node_settings, running, spans_of, stored
from tests.collector.otlp_helpers import run_sdk_exporter

PROTOCOLS = ["grpc", "http/protobuf"]


@dataclass(frozen=True, slots=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    server: Identity
    client: Identity
    stranger: Identity  # same subject as `client`, but another CA signed it


def _issue(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Identity:
    identity = Identity(folder / f"{name}.pem", folder / f"{name}-key.pem")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("otrace test CA", None)
    other_ca = _issue("some other CA", None)
    server = _issue(
        "otrace node",
        ca,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _issue("checkout service", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue("checkout service", other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(folder, "ca", *ca).cert,
        server=_write(folder, "server", *server),
        client=_write(folder, "client", *client),
        stranger=_write(folder, "stranger", *stranger),
    )


@contextmanager
def _tls_node(tmp_path: Path, pki: Pki, *, mtls: bool) -> Iterator[Node]:
    settings = node_settings(
        tmp_path,
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca) if mtls else "",
    )
    with running(settings) as node:
        yield node


def _endpoint(node: Node, protocol: str, scheme: str) -> dict[str, str]:
    assert node.grpc is not None and node.http is not None
    port = node.grpc.port if protocol == "grpc" else node.http.port
    return {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"{scheme}://127.0.0.1:{port}",
        # The Python SDK reads seconds here; a refused client stops retrying after one.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }


def _refused(env: dict[str, str], service: str) -> None:
    run = run_sdk_exporter({**env, "OTEL_SERVICE_NAME": service}, traces=1)
    assert run.returncode == 1, f"{service} was not refused:\n{run.stderr}"


def _accepted(node: Node, env: dict[str, str], service: str) -> None:
    run = run_sdk_exporter({**env, "OTEL_SERVICE_NAME": service}, traces=5)
    assert run.returncode == 0, run.stderr
    spans = spans_of(stored(node))
    assert len(spans) == 10
    assert {s[4] for s in spans} == {service}  # the refused clients stored nothing


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(
    tmp_path: Path, pki: Pki, protocol: str
) -> None:
    with _tls_node(tmp_path, pki, mtls=False) as node:
        _refused(
            {**_endpoint(node, protocol, "http"), "OTEL_EXPORTER_OTLP_INSECURE": "true"},
            "plaintext",
        )
        trusting = {
            **_endpoint(node, protocol, "https"),
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        }
        _accepted(node, trusting, "over-tls")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mtls_needs_a_client_certificate_from_the_client_ca(
    tmp_path: Path, pki: Pki, protocol: str
) -> None:
    with _tls_node(tmp_path, pki, mtls=True) as node:
        trusting = {
            **_endpoint(node, protocol, "https"),
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        }
        _refused(trusting, "no-client-cert")
        stranger = {
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.stranger.cert),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.stranger.key),
        }
        _refused({**trusting, **stranger}, "other-ca-client-cert")
        client = {
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client.cert),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client.key),
        }
        _accepted(node, {**trusting, **client}, "mtls-client")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key of another certificate", "unusable TLS files"),
        ("not PEM", "unusable TLS files"),
        ("client CA not PEM", "unusable TLS files"),
        ("missing file", "cannot read TLS files"),
        ("encrypted key", "is encrypted"),
    ],
)
def test_bad_tls_files_fail_before_anything_starts(
    tmp_path: Path, pki: Pki, case: str, message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"hunter2"),
        )
    )
    cert, key_path, client_ca = {
        "key of another certificate": (pki.server.cert, pki.client.key, ""),
        "not PEM": (garbage, garbage, ""),
        "client CA not PEM": (pki.server.cert, pki.server.key, str(garbage)),
        "missing file": (tmp_path / "absent.pem", pki.server.key, ""),
        "encrypted key": (pki.server.cert, encrypted, ""),
    }[case]
    node = Node(
        node_settings(tmp_path, tls_cert=str(cert), tls_key=str(key_path), tls_client_ca=client_ca)
    )
    with pytest.raises(ConfigError, match=message):
        node.start()
    assert node.enclave is None and node.grpc is None  # nothing was started
