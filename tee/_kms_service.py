"""The KMS on the wire: one byte-level protocol, served in-process or over gRPC.

Service `otrace.kms.v1.Kms`, unary methods on raw bytes (no protoc: generic
handlers with identity (de)serialisers). Every message is a canonical CBOR map:

| method | request | response |
|---|---|---|
| `Challenge` | `{}` | `{nonce}` |
| `Release` | `{quote, public_key, nonce, names}` | `{public_key, record, signature}` |
| `KmsKey` | `{}` | `{public_key}` (for display; enclaves pin it, never fetch it) |
| `GetPolicy` | `{}` | `{policy, owner, signature}` or `{}` before the first policy |
| `SetPolicy` | `{policy, owner, signature}` | `{digest}` |

Over gRPC, an `OTraceError` travels as status details `"<ClassName>: <message>"`
and the client raises the same class again, so callers see one error tree
whichever transport they use. The transport itself is plaintext gRPC: secrets
only ever travel inside the attested channel and policies carry owner signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, Protocol

import grpc

from otrace import errors
from otrace.errors import InvalidRequest, OTraceError, UnavailableError
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_map
from tee._grpc_server import GrpcServer
from tee._kms import Kms, ReleaseRequest, ReleaseResponse
from tee._policy import SignedPolicy

__all__ = [
    "SERVICE",
    "GrpcKmsTransport",
    "KmsTransport",
    "LocalKmsTransport",
    "decode_message",
    "encode_message",
    "error_from_rpc",
    "serve_kms",
]

SERVICE = "otrace.kms.v1.Kms"
_POLICY_FIELDS = frozenset({"policy", "owner", "signature"})
_STATUS = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PolicyError: grpc.StatusCode.PERMISSION_DENIED,
    errors.AttestationError: grpc.StatusCode.UNAUTHENTICATED,
}


class KmsTransport(Protocol):
    """Carries one KMS request to a KMS and brings back its response bytes."""

    def call(self, method: str, request: bytes) -> bytes: ...

    def close(self) -> None: ...


def encode_message(fields: dict[str, Any]) -> bytes:
    return encode_canonical(fields)


def decode_message(data: bytes, keys: frozenset[str], what: str) -> dict[str, Any]:
    """A canonical CBOR map with exactly `keys`, else `InvalidRequest` naming `what`."""
    try:
        return expect_map(decode_canonical(data), keys)
    except ValueError as exc:
        raise InvalidRequest(f"malformed KMS {what}: {exc}") from None


def release_fields(request: ReleaseRequest) -> dict[str, Any]:
    return {
        "quote": request.quote,
        "public_key": request.public_key,
        "nonce": request.nonce,
        "names": list(request.names),
    }


def policy_fields(signed: SignedPolicy) -> dict[str, Any]:
    return {"policy": signed.policy, "owner": signed.owner, "signature": signed.signature}


def handlers(kms: Kms) -> dict[str, Callable[[bytes], bytes]]:
    """The byte-level KMS methods, shared by the local and the gRPC transport."""
    methods = _KmsMethods(kms)
    return {
        "Challenge": methods.challenge,
        "Release": methods.release,
        "GetPolicy": methods.get_policy,
        "SetPolicy": methods.set_policy,
        "KmsKey": methods.kms_key,
    }


class _KmsMethods:
    """Decode a request, call the KMS, encode the answer; malformed input is `InvalidRequest`."""

    def __init__(self, kms: Kms) -> None:
        self._kms = kms

    def challenge(self, request: bytes) -> bytes:
        decode_message(request, frozenset(), "Challenge request")
        return encode_message({"nonce": self._kms.challenge()})

    def kms_key(self, request: bytes) -> bytes:
        decode_message(request, frozenset(), "KmsKey request")
        return encode_message({"public_key": self._kms.public_key})

    def release(self, request: bytes) -> bytes:
        fields = decode_message(request, _RELEASE_FIELDS, "Release request")
        names = fields["names"]
        try:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("names must be a list of strings")
            quote, public_key, nonce = (
                expect_bytes(fields[key], key) for key in ("quote", "public_key", "nonce")
            )
        except ValueError as exc:
            raise InvalidRequest(f"malformed KMS Release request: {exc}") from None
        response = self._kms.release(ReleaseRequest(quote, public_key, nonce, tuple(names)))
        answer = {
            "public_key": response.public_key,
            "record": response.record,
            "signature": response.signature,
        }
        return encode_message(answer)

    def get_policy(self, request: bytes) -> bytes:
        decode_message(request, frozenset(), "GetPolicy request")
        current = self._kms.policy()
        return encode_message({} if current is None else policy_fields(current))

    def set_policy(self, request: bytes) -> bytes:
        fields = decode_message(request, _POLICY_FIELDS, "SetPolicy request")
        try:
            signed = SignedPolicy(
                *(expect_bytes(fields[key], key) for key in ("policy", "owner", "signature"))
            )
        except ValueError as exc:
            raise InvalidRequest(f"malformed KMS SetPolicy request: {exc}") from None
        return encode_message({"digest": self._kms.set_policy(signed)})


_RELEASE_FIELDS = frozenset({"quote", "public_key", "nonce", "names"})


def decode_release_response(data: bytes) -> ReleaseResponse:
    keys = frozenset({"public_key", "record", "signature"})
    fields = decode_message(data, keys, "Release response")
    try:
        return ReleaseResponse(
            expect_bytes(fields["public_key"], "public_key", 32),
            expect_bytes(fields["record"], "record"),
            expect_bytes(fields["signature"], "signature", 64),
        )
    except ValueError as exc:
        raise InvalidRequest(f"malformed KMS Release response: {exc}") from None


class LocalKmsTransport:
    """The embedded KMS (e.g. inside `otrace serve`): same bytes, no network."""

    def __init__(self, kms: Kms) -> None:
        self._handlers = handlers(kms)

    def call(self, method: str, request: bytes) -> bytes:
        handler = self._handlers.get(method)
        if handler is None:
            raise InvalidRequest(f"the KMS has no method {method!r}")
        return handler(request)

    def close(self) -> None:
        return None


class GrpcKmsTransport:
    """A KMS in another process, reached over gRPC at `target` (`host:port`)."""

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self._target = target
        self._timeout = timeout
        self._channel = grpc.insecure_channel(target)

    def call(self, method: str, request: bytes) -> bytes:
        stub = self._channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            response = stub(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"KMS at {self._target}") from None
        if not isinstance(response, bytes):
            raise InvalidRequest(f"KMS at {self._target} sent a non-bytes response")
        return response

    def close(self) -> None:
        self._channel.close()


def serve_kms(kms: Kms, listen: str, *, workers: int = 4) -> GrpcServer:
    """Start serving `kms` on `listen` (`host:port`, port 0 picks a free one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    methods = {
        name: grpc.unary_unary_rpc_method_handler(_grpc_method(handler))
        for name, handler in handlers(kms).items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise UnavailableError(f"cannot listen on {listen}: {exc}") from None
    server.start()
    return GrpcServer(server, port)


def _grpc_method(handler: Callable[[bytes], bytes]) -> Callable[[bytes, Any], bytes]:
    def method(request: bytes, context: Any) -> bytes:
        try:
            return handler(request)
        except OTraceError as exc:
            code = next(
                (code for cls, code in _STATUS.items() if isinstance(exc, cls)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            context.abort(code, f"{type(exc).__name__}: {exc}")
            raise  # abort raises; this line only satisfies the type checker

    return method


def error_from_rpc(exc: grpc.RpcError, what: str) -> OTraceError:
    """The `OTraceError` a peer sent as status details `"<ClassName>: <message>"`, or an
    `UnavailableError` naming `what` for anything else (connection refused, deadline)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
    name, _, message = details.partition(": ")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, OTraceError) and message:
        return cls(message)
    return UnavailableError(f"{what} failed: {code.name if code else 'error'} {details}")
