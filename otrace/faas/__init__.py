"""Protected FaaS function chains (Clemmys-style) that emit trustworthy traces.

Roles: a trusted `Gateway`, an untrusted `Controller` that routes by plaintext
metadata only, and `FunctionHost`s running `@chain_function`s in emulated
enclaves. Arguments, W3C trace context and baggage travel AES-GCM-encrypted
under per-hop keys the KMS derives for attested functions only; an
owner-signed `ChainManifest` fixes the order; it is deployed to each host once
(`FunctionHost(..., manifests=[signed])`, a `ManifestRegistry`) and hops name
it by hash. Every refusal is a `ChainViolation`, raised before any function
code runs.

    @chain_function("resize")
    def resize(args, invocation): ...

Errors: `otrace.errors.ChainViolation` (chain broken), `AttestationError` /
`PolicyError` (KMS or producer CA refused), `ConfigError` (bad names, routes).
"""

from otrace.faas._deploy import attested_tracer_provider, install_chain
from otrace.faas._function import GATEWAY, ChainFunction, Invocation, chain_function
from otrace.faas._gateway import Controller, Gateway, PendingRequest, gateway_measurement
from otrace.faas._manifest import ChainManifest, FunctionEntry, SignedManifest, sign_manifest
from otrace.faas._message import ChainMessage, HopKey, HopMetadata, peek_metadata
from otrace.faas._producer import (
    ProducerCredentials,
    RemoteProducerCa,
    obtain_producer_credentials,
    producer_ca_methods,
)
from otrace.faas._registry import ManifestRegistry
from otrace.faas._replay import ReplayGuard
from otrace.faas._tracing import otlp_tracer_provider
from otrace.faas._transport import GrpcServer, GrpcTransport, LocalTransport, Transport, serve_bytes
from otrace.faas._worker import FunctionHost

__all__ = [
    "GATEWAY",
    "ChainFunction",
    "ChainManifest",
    "ChainMessage",
    "Controller",
    "FunctionEntry",
    "FunctionHost",
    "Gateway",
    "GrpcServer",
    "GrpcTransport",
    "HopKey",
    "HopMetadata",
    "Invocation",
    "LocalTransport",
    "ManifestRegistry",
    "PendingRequest",
    "ProducerCredentials",
    "RemoteProducerCa",
    "ReplayGuard",
    "SignedManifest",
    "Transport",
    "attested_tracer_provider",
    "chain_function",
    "gateway_measurement",
    "install_chain",
    "obtain_producer_credentials",
    "otlp_tracer_provider",
    "peek_metadata",
    "producer_ca_methods",
    "serve_bytes",
    "sign_manifest",
]
