"""The query API's messages (canonical CBOR maps inside attested-channel records).

Session, over one gRPC bidirectional stream `otrace.query.v1.Query/Session`:

    client -> node   {"nonce"}                                 (plain)
    node -> client   {"quote", "public_key"}                   (plain; the client verifies)
    client -> node   {"public_key", "record": login}           login = {"analyst", "proof"}
    node -> client   {"record": {"ok": true}}
    client -> node   {"record": request}  ...  node -> client   {"record": reply}

    proof = HMAC(auth_key, "otrace/query/v1/login\\0" ||
                 SHA-256(CBOR [quote, enclave pk, client pk, nonce]))

Requests: {"op": "get_trace", "trapdoor", "lookback_ns"} | {"op": "search", "terms",
"time_cover", "duration_cover", "start_ns", "end_ns", "min_duration_ns",
"max_duration_ns", "limit"} | {"op": "services"} | {"op": "operations", "trapdoor"}.
Replies: {"traces": TracesData bytes, "truncated", "reads"} | {"services"} |
{"operations"} | {"error": [class name, message]}.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2

from otrace.errors import InvalidRequest

__all__ = ["SESSION_METHOD", "decode", "encode", "login_proof"]

SESSION_METHOD = "/otrace.query.v1.Query/Session"
CHANNEL_CONTEXT = b"otrace/query/v1/session"
_LOGIN = b"otrace/query/v1/login\x00"


def encode_items(items: list[bytes]) -> bytes:
    return cbor2.dumps(items, canonical=True)


def encode(message: dict[str, Any]) -> bytes:
    return cbor2.dumps(message, canonical=True)


def decode(raw: bytes, what: str = "message") -> dict[str, Any]:
    try:
        message = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise InvalidRequest(f"malformed query {what}") from None
    if not isinstance(message, dict):
        raise InvalidRequest(f"malformed query {what}: not a map")
    return message


def login_proof(
    auth_key: bytes, quote: bytes, enclave_pk: bytes, client_pk: bytes, nonce: bytes
) -> bytes:
    binding = hashlib.sha256(encode_items([quote, enclave_pk, client_pk, nonce])).digest()
    return hmac.digest(auth_key, _LOGIN + binding, "sha256")
