"""The trusted gateway and the untrusted controller.

The gateway accepts a client request, opens the chain's root span, seals hop 0
for the first function (arguments, trace context and baggage encrypted) and
hands it to the controller; it opens the final hop, addressed to itself, and
returns the result. The controller holds no key: it reads the plaintext
metadata and forwards each message to the function `next_function` names,
until a message is addressed to the gateway.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage as otel_baggage
from opentelemetry.context import Context
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    SpanKind,
    Tracer,
    TracerProvider,
    set_span_in_context,
)

from otrace.errors import ChainViolation, ConfigError
from otrace.faas._function import GATEWAY, measure_source
from otrace.faas._manifest import SignedManifest
from otrace.faas._message import (
    REQUEST_ID_SIZE,
    ChainMessage,
    HopKey,
    HopMetadata,
    peek_metadata,
)
from otrace.faas._registry import ManifestRegistry
from otrace.faas._tracing import inject_context
from otrace.faas._transport import Transport
from otrace.faas._worker import HopSecrets, decode_plain, open_payload, plain_message
from tee import SECURITY_VERSION, KmsClient, Platform

__all__ = ["Controller", "Gateway", "PendingRequest", "gateway_measurement"]

Clock = Callable[[], float]


def gateway_measurement(config: Mapping[str, object] | None = None) -> bytes:
    """The measurement of this gateway build (its module and `config`)."""
    return measure_source(Gateway, {"role": GATEWAY, **dict(config or {})})


@dataclass(slots=True)
class PendingRequest:
    """A request the gateway sent and awaits the answer of."""

    request_id: bytes
    expires_at_ms: int
    span: Span = field(repr=False)
    #: The key of the final hop (answer to the gateway), derived in `begin` next to hop 0's.
    final_key: HopKey | None = field(default=None, repr=False)


class Gateway:
    """Trusted entry of one chain: `invoke(args)` runs the whole chain through the controller."""

    def __init__(
        self,
        manifest: SignedManifest,
        platform: Platform,
        kms: KmsClient,
        controller: Transport,
        *,
        owners: Collection[bytes],
        tracer_provider: TracerProvider | None = None,
        config: Mapping[str, object] | None = None,
        protect: bool = True,
        clock: Clock = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.signed = manifest
        # Deployed like a function host's: verified once here; hops carry only its hash.
        self.manifest = ManifestRegistry(owners, clock=clock).register(manifest)
        measurement = gateway_measurement(config)
        if protect and not hmac.compare_digest(measurement, self.manifest.gateway):
            raise ChainViolation(
                f"wrong measurement: this gateway measures {measurement.hex()[:16]}, the "
                f"manifest requires {self.manifest.gateway.hex()[:16]}"
            )
        identity = platform.identity(measurement, SECURITY_VERSION)
        self.secrets = HopSecrets(kms, platform, identity)
        self._controller = controller
        self._tracer: Tracer = (
            tracer_provider.get_tracer("otrace.faas") if tracer_provider else NoOpTracer()
        )
        self._protect = protect
        self._clock, self._rng = clock, rng

    def warm_up(self) -> None:
        """Cold start now: attest to the KMS and fetch the gateway's hop secrets."""
        if self._protect:
            self.secrets.for_manifest(self.manifest)

    def invoke(self, args: Any, *, baggage: Mapping[str, str] | None = None) -> Any:
        """Run the chain on `args` and return the last function's result."""
        pending, message = self.begin(args, baggage=baggage)
        try:
            answer = self._controller.call(message)
        except BaseException:
            pending.span.end()
            raise
        return self.finish(pending, answer)

    def begin(
        self, args: Any, *, baggage: Mapping[str, str] | None = None
    ) -> tuple[PendingRequest, bytes]:
        """Start the root span and seal hop 0 (the deterministic parts are injectable)."""
        request_id = self._rng(REQUEST_ID_SIZE)
        now_ms = int(self._clock() * 1000)
        expires = min(now_ms + self.manifest.request_ttl_ms, self.manifest.not_after_ms)
        m = self.manifest
        span = self._tracer.start_span(
            f"chain {m.chain_id}",
            kind=SpanKind.SERVER,
            attributes={"faas.chain": m.chain_id, "faas.request_id": request_id.hex()},
        )
        context: Context = set_span_in_context(span, Context())
        for key, value in (baggage or {}).items():
            context = otel_baggage.set_baggage(key, value, context)
        payload = {"args": args, "carrier": inject_context(context)}
        receiver = m.receiver(0)
        meta = HopMetadata(request_id, m.chain_id, 0, receiver.name, self.signed.digest, expires)
        if not self._protect:
            pending = PendingRequest(request_id, expires, span)
            return pending, plain_message(meta, payload)
        # Both of the request's gateway keys at once: back to back the KDF runs with warm
        # caches, while in `finish`, after the whole chain ran, it would start cold.
        hop_key = self.secrets.key(m, 0, request_id)
        final_key = self.secrets.key(m, m.length, request_id)
        pending = PendingRequest(request_id, expires, span, final_key)
        sealed = hop_key.seal(meta, b"", payload, self._rng(12))
        return pending, sealed.to_bytes()

    def finish(self, pending: PendingRequest, data: bytes) -> Any:
        """Check and open the final hop of `pending`; ends the root span."""
        try:
            message = ChainMessage.from_bytes(data)
            if not self._protect:
                return decode_plain(message.ciphertext)["args"]
            self._check_final(pending, message.metadata)
            if pending.final_key is None:
                raise ChainViolation(
                    f"request {pending.request_id.hex()} was not begun by a protected gateway"
                )
            args, _ = open_payload(pending.final_key, message)
            return args
        finally:
            pending.span.end()

    def _check_final(self, pending: PendingRequest, meta: HopMetadata) -> None:
        if not hmac.compare_digest(meta.request_id, pending.request_id):
            raise ChainViolation(
                f"splice: the answer belongs to request {meta.request_id.hex()}, "
                f"not {pending.request_id.hex()}"
            )
        if not hmac.compare_digest(meta.manifest_hash, self.signed.digest):
            raise ChainViolation("manifest swap: the answer names another manifest")
        if meta.step != self.manifest.length or meta.next_function != GATEWAY:
            raise ChainViolation(
                f"skip: the answer comes from step {meta.step}, the chain has "
                f"{self.manifest.length} functions"
            )
        if int(self._clock() * 1000) >= pending.expires_at_ms:
            raise ChainViolation(f"expired: request {pending.request_id.hex()} expired")


class Controller:
    """Untrusted router: forwards by `next_function` until the gateway is addressed."""

    def __init__(self, routes: Mapping[str, Transport], *, max_hops: int = 1000) -> None:
        self._routes = dict(routes)
        self._max_hops = max_hops

    def route(self, data: bytes) -> bytes:
        for _ in range(self._max_hops):
            meta = peek_metadata(data)
            if meta.next_function == GATEWAY:
                return data
            target = self._routes.get(meta.next_function)
            if target is None:
                raise ConfigError(f"the controller has no route to {meta.next_function!r}")
            data = target.call(data)
        raise ChainViolation(f"chain did not return to the gateway within {self._max_hops} hops")
