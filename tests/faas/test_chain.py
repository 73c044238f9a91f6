"""A protected 3-function chain in one process: the happy path and every attack.

Each attack is one thing an untrusted controller can do to the messages it
routes. Each must raise a `ChainViolation` naming the attack, and the function
it targeted must not run (the CALLS counter stays put).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otrace.errors import AttestationError, ChainViolation, PolicyError
from otrace.faas import (
    ChainMessage,
    Controller,
    Gateway,
    HopKey,
    LocalTransport,
    ReplayGuard,
    SignedManifest,
    install_chain,
    peek_metadata,
    sign_manifest,
)
from tee import hop_secret_name
from tests.faas.chain_functions import CALLS, refund, tampered_price
from tests.faas.conftest import Chain, build_chain

ORDER = {"items": [3, 4, 5], "card": "4111-1111-1111-1111", "blob": b"\x00" * 64}


@contextmanager
def refused(match: str) -> Iterator[None]:
    before = CALLS.copy()
    with pytest.raises(ChainViolation, match=match):
        yield
    assert before == CALLS, "a function body ran although the message was refused"


def hops(chain: Chain, upto: int) -> list[bytes]:
    """Messages of one fresh request: hop 0 (from the gateway) .. hop `upto`."""
    _, message = chain.gateway.begin(ORDER, baggage={"tenant": "acme"})
    messages = [message]
    for name in ("validate", "price", "notify")[:upto]:
        messages.append(chain.hosts[name].handle(messages[-1]))
    return messages


def edit(data: bytes, **changes: object) -> bytes:
    message = ChainMessage.from_bytes(data)
    meta_changes = {
        k: v
        for k, v in changes.items()
        if k
        in {"step", "next_function", "request_id", "manifest_hash", "chain_id", "expires_at_ms"}
    }
    other = {k: v for k, v in changes.items() if k not in meta_changes}
    meta = dataclasses.replace(message.metadata, **meta_changes)  # type: ignore[arg-type]
    return dataclasses.replace(message, metadata=meta, **other).to_bytes()  # type: ignore[arg-type]


def test_full_chain_runs_and_returns_the_result(chain: Chain) -> None:
    result = chain.gateway.invoke(ORDER, baggage={"tenant": "acme"})
    assert result == {"total": 12, "tenant": "acme", "step": 2}
    assert CALLS == {"validate": 1, "price": 1, "notify": 1}
    # Cold start once per role, warm afterwards.
    chain.gateway.invoke(ORDER)
    assert all(h.secrets.fetches == 1 for h in chain.hosts.values())
    assert chain.gateway.secrets.fetches == 1


def test_controller_sees_metadata_only(chain: Chain) -> None:
    messages = hops(chain, 3)
    for step, data in enumerate(messages):
        meta = peek_metadata(data)
        assert (meta.step, meta.chain_id) == (step, "shop")
        for secret in (b"4111-1111", b"traceparent", b"tenant", b"acme", b"\x00" * 64):
            assert secret not in data
        # The manifest was deployed to the hosts; hops name it by hash only.
        assert meta.manifest_hash == chain.signed.digest
        assert chain.signed.signature not in data and chain.signed.manifest not in data


def test_each_function_gets_only_its_own_hop_keys(chain: Chain) -> None:
    price = chain.hosts["price"]
    granted = price.secrets.for_manifest(chain.manifest)
    assert sorted(granted) == sorted(chain.manifest.hop_secret(h) for h in (1, 2))
    for step in (1, 2):
        price.secrets.key(chain.manifest, step, bytes(16))
    for step in (0, 3, 4, -1):
        with pytest.raises(ChainViolation, match="not this enclave's"):
            price.secrets.key(chain.manifest, step, bytes(16))
    with pytest.raises(PolicyError, match="does not release"):
        chain.client.obtain_secrets(
            chain.platform, price.secrets.identity, [chain.manifest.hop_secret(0)]
        )
    with pytest.raises(PolicyError, match="does not release"):
        chain.client.obtain_secrets(chain.platform, price.secrets.identity, ["chain/shop"])
    # A hop secret is bound to the receiver's measurement: another function's name is another key.
    other = hop_secret_name("shop", 1, refund.measurement)
    with pytest.raises(PolicyError):
        chain.client.obtain_secrets(chain.platform, price.secrets.identity, [other])


def test_reorder_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    with refused("reorder: the message for step 1"):
        chain.hosts["validate"].handle(to_price)


def test_skip_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    with refused("skip: the message for step 1 .* skipping step"):
        chain.hosts["notify"].handle(to_price)
    # Relabelled to look like step 2: the hop key says it was sealed for step 1.
    relabelled = edit(to_price, step=2, next_function="notify")
    with refused("splice: hop 2 .* was not sealed for this request, step and function"):
        chain.hosts["notify"].handle(relabelled)


def test_replay_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    chain.hosts["price"].handle(to_price)
    with refused("replay: step 1 of request"):
        chain.hosts["price"].handle(to_price)


def test_function_swap_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    outsider = chain.make_host(refund)
    with refused("function swap: step 1 must run 'price'.*'refund'"):
        outsider.handle(to_price)


def test_wrong_measurement_is_refused_and_gets_no_keys(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    modified = chain.make_host(tampered_price)
    with refused("wrong measurement: function 'price' measures"):
        modified.handle(to_price)
    with pytest.raises(AttestationError, match="not allow-listed"):
        modified.secrets.for_manifest(chain.manifest)


def test_splice_from_another_request_is_refused(chain: Chain) -> None:
    first = ChainMessage.from_bytes(hops(chain, 1)[1])
    second = ChainMessage.from_bytes(hops(chain, 1)[1])
    spliced = dataclasses.replace(
        first, key_id=second.key_id, nonce=second.nonce, ciphertext=second.ciphertext
    )
    with refused("splice: hop 1 of request"):
        chain.hosts["price"].handle(spliced.to_bytes())
    # The other request's metadata with this request's body: sealed for another request id.
    swapped = dataclasses.replace(second, metadata=first.metadata, previous_tag=first.previous_tag)
    with refused("splice"):
        chain.hosts["price"].handle(swapped.to_bytes())
    # The ciphertext from the other request under this one's key id: authentication fails.
    with refused("tampered"):
        chain.hosts["price"].handle(
            dataclasses.replace(first, nonce=second.nonce, ciphertext=second.ciphertext).to_bytes()
        )


def test_previous_tag_is_authenticated(chain: Chain) -> None:
    message = ChainMessage.from_bytes(hops(chain, 1)[1])
    with refused("tampered"):
        chain.hosts["price"].handle(dataclasses.replace(message, previous_tag=bytes(16)).to_bytes())


def deploy_other_chain(chain: Chain) -> SignedManifest:
    """Chain "other", with the same functions in the same order, deployed to every host."""
    other = dataclasses.replace(chain.manifest, chain_id="other")
    install_chain(
        chain.client,
        other,
        chain.owner,
        trusted_platform_keys=[chain.platform.attestation_public_key],
    )
    signed = chain.sign(other)
    for host in chain.hosts.values():
        host.register(signed)
    return signed


def test_manifest_swap_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    price = chain.hosts["price"]
    # Another signed version of the chain, never deployed to the host.
    undeployed = chain.sign(
        dataclasses.replace(chain.manifest, not_after_ms=chain.manifest.not_after_ms + 1)
    )
    with refused("unknown manifest: hop 1 of request .* not deployed to this host"):
        price.handle(edit(to_price, manifest_hash=undeployed.digest))
    # A manifest the host does hold, of another chain.
    other = deploy_other_chain(chain)
    with refused("manifest swap: metadata names chain 'shop' but manifest .* 'other'"):
        price.handle(edit(to_price, manifest_hash=other.digest))
    # Relabelled consistently (chain id too): the hop key was derived for chain "shop".
    with refused("splice: hop 1 of request"):
        price.handle(edit(to_price, manifest_hash=other.digest, chain_id="other"))
    # A manifest the owner never signed cannot be deployed, so its hash stays unknown.
    forged = sign_manifest(
        dataclasses.replace(chain.manifest, request_ttl_ms=1), Ed25519PrivateKey.generate()
    )
    with pytest.raises(ChainViolation, match="not signed by a pinned chain owner"):
        price.register(forged)
    with refused("unknown manifest"):
        price.handle(edit(to_price, manifest_hash=forged.digest))
    price.handle(to_price)  # the genuine message still runs


def test_forged_registration_is_refused(chain: Chain) -> None:
    price = chain.hosts["price"]
    assert price.register(chain.signed) == chain.manifest  # deploying again is a no-op
    with pytest.raises(ChainViolation, match="signature does not verify"):
        price.register(dataclasses.replace(chain.signed, signature=bytes(64)))
    # Valid bytes of another manifest under the deployed manifest's signature.
    other = chain.sign(dataclasses.replace(chain.manifest, chain_id="other"))
    with pytest.raises(ChainViolation, match="signature does not verify"):
        price.register(dataclasses.replace(chain.signed, manifest=other.manifest))
    with pytest.raises(ChainViolation, match="not signed by a pinned chain owner"):
        price.register(sign_manifest(chain.manifest, Ed25519PrivateKey.generate()))
    now_ms = int(chain.clock() * 1000)
    expired = chain.sign(
        dataclasses.replace(chain.manifest, chain_id="old", not_after_ms=now_ms - 1)
    )
    with pytest.raises(ChainViolation, match="manifest of chain 'old' has expired"):
        price.register(expired)
    assert len(price.manifests) == 1


def test_another_manifest_under_a_deployed_chain_id_is_refused(chain: Chain) -> None:
    """A second manifest for "shop" cannot replace the first under a request in flight."""
    to_price = hops(chain, 1)[1]
    price = chain.hosts["price"]
    # The same chain id, price moved to step 0: step 1 would then be another function's.
    moved = chain.manifest.functions
    newer = chain.sign(
        dataclasses.replace(chain.manifest, functions=(moved[1], moved[0], moved[2]))
    )
    with pytest.raises(ChainViolation, match="'shop' is already deployed here with manifest"):
        price.register(newer)
    with refused("unknown manifest"):
        price.handle(edit(to_price, manifest_hash=newer.digest))
    assert price.manifests.named_by(peek_metadata(to_price)) == chain.manifest
    price.handle(to_price)  # checked against the manifest it was issued under
    assert CALLS["price"] == 1


def test_a_gateway_with_an_undeployed_manifest_runs_nothing(chain: Chain) -> None:
    undeployed = chain.sign(dataclasses.replace(chain.manifest, request_ttl_ms=30_000))
    gateway = Gateway(
        undeployed,
        chain.platform,
        chain.client,
        LocalTransport(
            Controller({n: LocalTransport(h.handle) for n, h in chain.hosts.items()}).route
        ),
        owners=chain.owners,
        clock=chain.clock,
    )
    with refused("unknown manifest: hop 0"):
        gateway.invoke(ORDER)


def test_signed_manifest_digest_follows_its_bytes(chain: Chain) -> None:
    other = chain.sign(dataclasses.replace(chain.manifest, request_ttl_ms=30_000))
    relabelled = dataclasses.replace(chain.signed, manifest=other.manifest)
    assert relabelled.digest == hashlib.sha256(other.manifest).digest() == other.digest


def test_expired_request_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    chain.clock.now += 61
    with refused("expired: request .* expired"):
        chain.hosts["price"].handle(to_price)


def test_extended_expiry_is_tampering(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    meta = peek_metadata(to_price)
    chain.clock.now += 61
    with refused("tampered"):
        chain.hosts["price"].handle(edit(to_price, expires_at_ms=meta.expires_at_ms + 120_000))


def test_tampered_ciphertext_is_refused(chain: Chain) -> None:
    message = ChainMessage.from_bytes(hops(chain, 1)[1])
    flipped = bytearray(message.ciphertext)
    flipped[5] ^= 1
    with refused("tampered: hop 1 of request .* failed authentication"):
        chain.hosts["price"].handle(
            dataclasses.replace(message, ciphertext=bytes(flipped)).to_bytes()
        )


def test_routing_name_must_match_the_manifest(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    with refused("routing metadata names 'notify' but step 1 is 'price'"):
        chain.hosts["price"].handle(edit(to_price, next_function="notify"))


def test_garbage_is_refused(chain: Chain) -> None:
    with refused("malformed chain message"):
        chain.hosts["price"].handle(b"\xa0")


def test_request_from_before_a_restart_is_refused(chain: Chain) -> None:
    to_price = hops(chain, 1)[1]
    chain.clock.now += 1
    restarted = chain.make_host(chain.hosts["price"].function)
    with refused("issued before this function started"):
        restarted.handle(to_price)


def test_gateway_refuses_an_answer_for_another_request(chain: Chain) -> None:
    pending, _ = chain.gateway.begin(ORDER)
    other_answer = hops(chain, 3)[3]
    with pytest.raises(ChainViolation, match="splice: the answer belongs to request"):
        chain.gateway.finish(pending, other_answer)


def test_gateway_refuses_a_short_cut_answer(chain: Chain) -> None:
    pending, message = chain.gateway.begin(ORDER)
    to_price = chain.hosts["validate"].handle(message)
    with pytest.raises(ChainViolation, match="skip: the answer comes from step 1"):
        chain.gateway.finish(pending, to_price)


def test_replay_guard_forgets_expired_entries() -> None:
    guard = ReplayGuard()
    guard.record(b"r" * 16, 1, expires_at_ms=100, now_ms=0)
    with pytest.raises(ChainViolation, match="replay"):
        guard.record(b"r" * 16, 1, expires_at_ms=100, now_ms=50)
    guard.record(b"s" * 16, 1, expires_at_ms=300, now_ms=200)
    assert len(guard) == 1


def test_hop_key_is_not_printed(chain: Chain) -> None:
    assert "HopKey(...)" == repr(HopKey(b"k" * 32, b"r" * 16))
    pending, _ = chain.gateway.begin(ORDER)
    assert pending.final_key is not None and "final_key" not in repr(pending)


def test_unprotected_mode_runs_the_same_chain(tmp_path: Path) -> None:
    chain = build_chain(tmp_path)
    hosts = {
        name: chain.make_host(host.function, protect=False) for name, host in chain.hosts.items()
    }
    controller = Controller({n: LocalTransport(h.handle) for n, h in hosts.items()})
    gateway = Gateway(
        chain.signed,
        chain.platform,
        chain.client,
        LocalTransport(controller.route),
        owners=chain.owners,
        protect=False,
        clock=chain.clock,
    )
    assert gateway.invoke(ORDER)["total"] == 12
