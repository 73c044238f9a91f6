"""The function host: runs one chain function inside an (emulated) enclave.

The host is deployed with the owner-signed manifests of the chains it serves
(`ManifestRegistry`: signature, pinned owner and expiry checked once, at
registration). `FunctionHost.handle(message) -> next message` checks, before
any function code runs and each with its own `ChainViolation` message: message
shape, the manifest the metadata names (unknown manifest), chain id (manifest
swap), manifest and request expiry, a request issued before this host started
(replay across restarts fails closed), routing name, this host's place at the
step (wrong measurement, function swap, skip, reorder), replay of (request_id,
step), then the hop key (splice) and AES-GCM (tampering, including a relabelled
manifest hash). Only then is the pair recorded as seen and the function run.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import NoOpTracer, SpanKind, Tracer, TracerProvider

from otrace.errors import ChainViolation
from otrace.faas._function import ChainFunction, Invocation
from otrace.faas._manifest import ChainManifest, SignedManifest
from otrace.faas._message import ChainMessage, HopKey, HopMetadata
from otrace.faas._registry import ManifestRegistry
from otrace.faas._replay import ReplayGuard
from otrace.faas._tracing import baggage_of, extract_context, inject_context
from tee import SECURITY_VERSION, EnclaveIdentity, KmsClient, Platform
from tee._encoding import decode_canonical, encode_canonical

__all__ = ["FunctionHost", "HopSecrets", "check_fresh", "check_place", "open_payload"]

Clock = Callable[[], float]
Rng = Callable[[int], bytes]


class HopSecrets:
    """The hop secrets an enclave obtained from the KMS, per manifest (cold start once)."""

    __slots__ = ("_by_step", "_identity", "_kms", "_lock", "_platform", "_secrets", "fetches")

    def __init__(self, kms: KmsClient, platform: Platform, identity: EnclaveIdentity) -> None:
        self._kms, self._platform, self._identity = kms, platform, identity
        self._lock = threading.Lock()
        self._secrets: dict[bytes, dict[str, bytes]] = {}
        # Per manifest, hop step -> secret (None for hops that are not this enclave's).
        self._by_step: dict[bytes, tuple[bytes | None, ...]] = {}
        self.fetches = 0

    def __repr__(self) -> str:
        return f"HopSecrets(manifests={len(self._secrets)}, fetches={self.fetches})"

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def for_manifest(self, manifest: ChainManifest) -> dict[str, bytes]:
        """Attest and fetch this enclave's hop secrets for `manifest` (cached)."""
        cached = self._secrets.get(manifest.digest)  # warm path: entries are never replaced
        if cached is not None:
            return cached
        with self._lock:
            cached = self._secrets.get(manifest.digest)
            if cached is None:
                hops = manifest.hops_of(self._identity.measurement)
                names = [manifest.hop_secret(h) for h in sorted(hops)]
                cached = self._kms.obtain_secrets(self._platform, self._identity, names)
                self._by_step[manifest.digest] = tuple(
                    cached.get(manifest.hop_secret(step)) for step in range(manifest.length + 1)
                )
                self._secrets[manifest.digest] = cached
                self.fetches += 1
            return cached

    def key(self, manifest: ChainManifest, step: int, request_id: bytes) -> HopKey:
        """The key of hop `step` of `request_id`; `ChainViolation` if the hop is not ours."""
        by_step = self._by_step.get(manifest.digest)
        if by_step is None:
            self.for_manifest(manifest)
            by_step = self._by_step[manifest.digest]
        secret = by_step[step] if 0 <= step < len(by_step) else None
        if secret is None:
            raise ChainViolation(
                f"hop {step} of chain {manifest.chain_id!r} is not this enclave's: no key for it"
            )
        return HopKey(secret, request_id)


class FunctionHost:
    """One chain function with its keys, replay set and tracer. `handle` is the entry."""

    def __init__(
        self,
        function: ChainFunction,
        platform: Platform,
        kms: KmsClient,
        *,
        owners: Collection[bytes],
        manifests: Iterable[SignedManifest] = (),
        tracer_provider: TracerProvider | None = None,
        security_version: int = SECURITY_VERSION,
        protect: bool = True,
        clock: Clock = time.time,
        rng: Rng = os.urandom,
    ) -> None:
        self.function = function
        identity = platform.identity(function.measurement, security_version)
        self.secrets = HopSecrets(kms, platform, identity)
        self.manifests = ManifestRegistry(owners, manifests, clock=clock)
        self._tracer: Tracer = (
            tracer_provider.get_tracer("otrace.faas") if tracer_provider else NoOpTracer()
        )
        self._protect = protect
        self._clock, self._rng = clock, rng
        self._started_ms = _ms(clock())
        self._replay = ReplayGuard()

    def __repr__(self) -> str:
        return f"FunctionHost({self.function.name}, protect={self._protect})"

    def register(self, manifest: SignedManifest) -> ChainManifest:
        """Deploy a chain to this host (verified once; see `ManifestRegistry.register`)."""
        return self.manifests.register(manifest)

    def handle(self, data: bytes) -> bytes:
        """Check one incoming hop, run the function, return the sealed next hop."""
        message = ChainMessage.from_bytes(data)
        if not self._protect:
            return self._handle_plain(message)
        meta = message.metadata
        manifest = self.manifests.named_by(meta)
        now_ms = _ms(self._clock())
        check_fresh(manifest, meta, now_ms, self._started_ms)
        check_place(manifest, meta, self.function)
        self._replay.check(meta.request_id, meta.step)
        following = meta.step + 1
        # Both keys back to back: the KDF runs warm, where after the function body it ran cold.
        key_in = self.secrets.key(manifest, meta.step, meta.request_id)
        key_out = self.secrets.key(manifest, following, meta.request_id)
        args, carrier = open_payload(key_in, message)
        self._replay.record(meta.request_id, meta.step, meta.expires_at_ms, now_ms)
        result, out_carrier = self._run(meta, args, carrier)
        out_meta = HopMetadata(
            meta.request_id,
            meta.chain_id,
            following,
            manifest.receiver(following).name,
            meta.manifest_hash,
            meta.expires_at_ms,
        )
        payload = {"args": result, "carrier": out_carrier}
        sealed = key_out.seal(out_meta, message.tag, payload, self._rng(12))
        return sealed.to_bytes()

    def _run(self, meta: HopMetadata, args: Any, carrier: object) -> tuple[Any, dict[str, str]]:
        parent = extract_context(carrier)
        token = otel_context.attach(parent)
        try:
            attributes: dict[str, str | int] = {
                "faas.chain": meta.chain_id,
                "faas.step": meta.step,
                "faas.request_id": meta.request_id.hex(),
            }
            name = f"faas {self.function.name}"
            with self._tracer.start_as_current_span(
                name, kind=SpanKind.SERVER, attributes=attributes
            ):
                invocation = Invocation(
                    meta.request_id, meta.chain_id, meta.step, self._tracer, baggage_of(parent)
                )
                result = self.function(args, invocation)
                return result, inject_context()
        finally:
            otel_context.detach(token)

    def _handle_plain(self, message: ChainMessage) -> bytes:
        """The same runtime without protection (the benchmark's baseline): no checks, no crypto.

        It is deployed with the same manifests and routes by the same lookup.
        """
        meta = message.metadata
        manifest = self.manifests.named_by(meta)
        args, carrier = _payload(decode_plain(message.ciphertext), meta)
        result, out_carrier = self._run(meta, args, carrier)
        following = meta.step + 1
        out_meta = HopMetadata(
            meta.request_id,
            meta.chain_id,
            following,
            manifest.receiver(following).name,
            meta.manifest_hash,
            meta.expires_at_ms,
        )
        return plain_message(out_meta, {"args": result, "carrier": out_carrier})


def check_fresh(manifest: ChainManifest, meta: HopMetadata, now_ms: int, started_ms: int) -> None:
    """Chain id, manifest and request expiry, and the fail-closed restart rule."""
    if meta.chain_id != manifest.chain_id:
        raise ChainViolation(
            f"manifest swap: metadata names chain {meta.chain_id!r} but manifest "
            f"{meta.manifest_hash.hex()[:16]} is chain {manifest.chain_id!r}'s"
        )
    if now_ms > manifest.not_after_ms:
        raise ChainViolation(f"manifest of chain {manifest.chain_id!r} has expired")
    if now_ms >= meta.expires_at_ms:
        raise ChainViolation(
            f"expired: request {meta.request_id.hex()} expired "
            f"{(now_ms - meta.expires_at_ms) / 1000:.1f}s ago"
        )
    if meta.expires_at_ms > manifest.not_after_ms:
        raise ChainViolation("request outlives its manifest (expiry after the manifest's)")
    if meta.expires_at_ms - manifest.request_ttl_ms < started_ms:
        raise ChainViolation(
            f"request {meta.request_id.hex()} was issued before this function started; "
            "refused because the replay set does not survive restarts (retry with a new request)"
        )


def check_place(manifest: ChainManifest, meta: HopMetadata, function: ChainFunction) -> None:
    """Refuse unless `function` is the one the manifest lists at the message's step."""
    step = meta.step
    if step >= manifest.length:
        raise ChainViolation(
            f"step {step} is not a function step of chain {manifest.chain_id!r} "
            f"({manifest.length} functions)"
        )
    expected = manifest.receiver(step)
    if meta.next_function != expected.name:
        raise ChainViolation(
            f"routing metadata names {meta.next_function!r} but step {step} is {expected.name!r}"
        )
    if hmac.compare_digest(function.measurement, expected.measurement):
        return
    if function.name == expected.name:
        raise ChainViolation(
            f"wrong measurement: function {function.name!r} measures "
            f"{function.measurement.hex()[:16]}, the manifest requires "
            f"{expected.measurement.hex()[:16]} at step {step}"
        )
    own = manifest.steps_of(function.measurement)
    if not own:
        raise ChainViolation(
            f"function swap: step {step} must run {expected.name!r}, but the message reached "
            f"{function.name!r}, which is not in chain {manifest.chain_id!r}"
        )
    if min(own) > step:
        raise ChainViolation(
            f"skip: the message for step {step} ({expected.name!r}) reached {function.name!r} "
            f"at step {min(own)}, skipping step(s) {step}..{min(own) - 1}"
        )
    raise ChainViolation(
        f"reorder: the message for step {step} ({expected.name!r}) reached {function.name!r}, "
        f"which the manifest places at step(s) {own}, not {step}"
    )


def open_payload(key: HopKey, message: ChainMessage) -> tuple[Any, object]:
    """Authenticate and decrypt a hop: (args, trace carrier)."""
    return _payload(key.open(message), message.metadata)


def _payload(value: Any, meta: HopMetadata) -> tuple[Any, object]:
    if not isinstance(value, dict) or set(value) != {"args", "carrier"}:
        raise ChainViolation(f"hop {meta.step} payload is not {{args, carrier}}")
    return value["args"], value["carrier"]


def plain_message(meta: HopMetadata, payload: Any) -> bytes:
    """An unprotected hop (benchmark baseline): the payload in clear, no key, no tag."""
    body = encode_canonical(payload)
    return ChainMessage(meta, b"", bytes(16), bytes(12), body).to_bytes()


def decode_plain(data: bytes) -> Any:
    try:
        return decode_canonical(data)
    except ValueError:
        raise ChainViolation("malformed unprotected payload") from None


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
