"""`otrace bench faas`: a protected 3-function chain against the same runtime unprotected.

Both deployments use the same gateway, controller and function hosts, built
once in this process on one platform and one KMS, and deployed with the same
signed manifest (hops name it by hash); "unprotected" turns off the per-hop
checks, hop encryption, replay set and KMS keys (`protect=False`).
Invocations alternate between the two (A B A B ...) so drift hits both alike.
Over `grpc` every role is its own loopback gRPC server, as across processes;
`local` calls in memory (the crypto's share is then largest).

Cold start: a fresh deployment's first invocation, which attests each of the
four enclaves (gateway + 3 functions) to the KMS and fetches their hop keys
(the manifest's signature is checked at deployment, before the clock starts).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import ConfigError
from otrace.faas import (
    ChainFunction,
    ChainManifest,
    Controller,
    FunctionEntry,
    FunctionHost,
    Gateway,
    GrpcTransport,
    Invocation,
    LocalTransport,
    SignedManifest,
    Transport,
    chain_function,
    gateway_measurement,
    install_chain,
    serve_bytes,
    sign_manifest,
)
from tee import Kms, KmsClient, Platform

__all__ = ["FaasBenchConfig", "FaasBenchReport", "Latency", "run_faas_bench"]

ProgressCallback = Callable[[str, int, int], None]


@chain_function("decode")
def decode(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    """Inflate-check the upload and fingerprint it."""
    blob = args["blob"]
    zlib.decompress(zlib.compress(blob, 1))
    return {"blob": blob, "digest": hashlib.sha256(blob).digest()}


@chain_function("transform")
def transform(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    """A byte-wise transformation of the whole argument."""
    blob = bytes(reversed(args["blob"]))
    return {"blob": blob, "digest": args["digest"]}


@chain_function("store")
def store(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    """Compress for storage and return a receipt with the data."""
    packed = zlib.compress(args["blob"], 1)
    return {"blob": args["blob"], "packed": len(packed), "digest": args["digest"]}


FUNCTIONS: tuple[ChainFunction, ...] = (decode, transform, store)


@dataclass(frozen=True, slots=True)
class FaasBenchConfig:
    invocations: int = 1000
    arg_bytes: int = 4096
    transport: str = "grpc"  # grpc | local
    cold_starts: int = 5

    def __post_init__(self) -> None:
        if self.invocations < 2 or self.arg_bytes < 0 or self.cold_starts < 1:
            raise ConfigError("need at least 2 invocations, 1 cold start, arg_bytes >= 0")
        if self.transport not in {"grpc", "local"}:
            raise ConfigError("transport is 'grpc' or 'local'")


@dataclass(frozen=True, slots=True)
class Latency:
    """Per-invocation latency in milliseconds."""

    samples: tuple[float, ...] = field(repr=False)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


@dataclass(frozen=True, slots=True)
class FaasBenchReport:
    config: FaasBenchConfig
    protected: Latency
    unprotected: Latency
    cold_start: Latency  # first invocation of a fresh protected deployment

    @property
    def overhead_p50(self) -> float:
        return self.protected.p50 / self.unprotected.p50 - 1

    @property
    def overhead_p99(self) -> float:
        return self.protected.p99 / self.unprotected.p99 - 1

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "invocations": c.invocations,
            "arg_bytes": c.arg_bytes,
            "transport": c.transport,
            "protected_p50_ms": self.protected.p50,
            "protected_p99_ms": self.protected.p99,
            "unprotected_p50_ms": self.unprotected.p50,
            "unprotected_p99_ms": self.unprotected.p99,
            "overhead_p50": self.overhead_p50,
            "overhead_p99": self.overhead_p99,
            "added_p50_ms": self.protected.p50 - self.unprotected.p50,
            "cold_start_p50_ms": self.cold_start.p50,
            "warm_p50_ms": self.protected.p50,
        }


class _Deployment:
    """Platform, KMS and a signed manifest shared by every chain built for the run."""

    def __init__(self, workdir: Path) -> None:
        self.platform = Platform.open(workdir / "platform")
        measurement = hashlib.sha256(b"otrace bench kms").digest()
        kms = Kms(workdir / "kms", self.platform, self.platform.identity(measurement, 1))
        self.kms = KmsClient.local(kms)
        owner = Ed25519PrivateKey.generate()
        self.owners = [owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)]
        manifest = ChainManifest(
            "bench",
            tuple(FunctionEntry(f.name, f.measurement) for f in FUNCTIONS),
            gateway=gateway_measurement(),
            not_after_ms=int(time.time() * 1000) + 24 * 3_600_000,
            request_ttl_ms=600_000,
        )
        trusted = [self.platform.attestation_public_key]
        install_chain(self.kms, manifest, owner, trusted_platform_keys=trusted)
        self.signed: SignedManifest = sign_manifest(manifest, owner)

    @contextmanager
    def chain(self, *, protect: bool, transport: str) -> Iterator[Gateway]:
        with ExitStack() as stack:
            routes: dict[str, Transport] = {}
            for function in FUNCTIONS:
                host = FunctionHost(
                    function,
                    self.platform,
                    self.kms,
                    owners=self.owners,
                    manifests=[self.signed],
                    protect=protect,
                )
                routes[function.name] = self._transport(host.handle, transport, stack)
            controller = self._transport(Controller(routes).route, transport, stack)
            yield Gateway(
                self.signed,
                self.platform,
                self.kms,
                controller,
                owners=self.owners,
                protect=protect,
            )

    @staticmethod
    def _transport(handler: Callable[[bytes], bytes], kind: str, stack: ExitStack) -> Transport:
        if kind == "local":
            return LocalTransport(handler)
        server = serve_bytes({"Call": handler}, "127.0.0.1:0", workers=2)
        stack.callback(server.stop, 0)
        client = GrpcTransport(f"127.0.0.1:{server.port}")
        stack.callback(client.close)
        return client


def run_faas_bench(
    config: FaasBenchConfig, workdir: Path, progress: ProgressCallback | None = None
) -> FaasBenchReport:
    """Measure protected vs unprotected invocations side by side, then cold starts."""
    deployment = _Deployment(workdir)
    args = {"blob": os.urandom(config.arg_bytes)}
    samples: dict[bool, list[float]] = {True: [], False: []}
    with (
        deployment.chain(protect=True, transport=config.transport) as protected,
        deployment.chain(protect=False, transport=config.transport) as plain,
    ):
        gateways = {True: protected, False: plain}
        for gateway in gateways.values():  # warm both: keys, gRPC channels, caches
            for _ in range(min(20, config.invocations)):
                gateway.invoke(args)
        for i in range(config.invocations):
            for protect in (i % 2 == 0, i % 2 != 0):  # alternate which goes first
                samples[protect].append(_timed(gateways[protect], args))
            if progress is not None:
                progress("invocations", i + 1, config.invocations)
    cold: list[float] = []
    for i in range(config.cold_starts):
        with deployment.chain(protect=True, transport=config.transport) as fresh:
            cold.append(_timed(fresh, args))
        if progress is not None:
            progress("cold starts", i + 1, config.cold_starts)
    return FaasBenchReport(
        config, Latency(tuple(samples[True])), Latency(tuple(samples[False])), Latency(tuple(cold))
    )


def _timed(gateway: Gateway, args: dict[str, Any]) -> float:
    start = time.perf_counter()
    result = gateway.invoke(args)
    elapsed = (time.perf_counter() - start) * 1000
    if result["digest"] != hashlib.sha256(args["blob"]).digest():
        raise RuntimeError("the chain returned a wrong result")
    return elapsed
