"""SSLE protocol: uniqueness, fairness, unpredictability, and every forgery refused."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import replace

import pytest
from scipy.stats import chisquare

from otrace.errors import AttestationError, ElectionError
from tee import Enclave, EnclaveIdentity, Platform, Verifier
from tee.ssle import (
    Claim,
    Draw,
    PublishedShuffle,
    Registry,
    ReplicaKey,
    Shuffler,
    Tracker,
    TrackerSubmission,
    uniform_permutation,
    verify_claim,
    verify_shuffle,
    verify_submission,
)

from .conftest import OTHER_MEASUREMENT, seeded

SEED = hashlib.sha512(b"previous state root").digest()


def _registry(keys: list[ReplicaKey]) -> Registry:
    registry = Registry()
    for key in keys:
        registry.register(key.name, key.public_key)
    return registry


def _term(
    term: int, keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier, seed: bytes = SEED
) -> tuple[PublishedShuffle, Draw]:
    rng = seeded(10_000 + term)
    inputs = tuple(key.tracker_for(term, rng=rng).tracker for key in keys)
    published = shuffler.shuffle(term, inputs)
    verify_shuffle(published, term=term, inputs=inputs, verifier=verifier)
    return published, published.draw(seed)


def _trackers(keys: list[ReplicaKey], term: int, *, seed: int) -> tuple[Tracker, ...]:
    rng = seeded(seed)  # one source for all: every tracker gets its own r
    return tuple(key.tracker_for(term, rng=rng).tracker for key in keys)


def _owner(keys: list[ReplicaKey], draw: Draw) -> ReplicaKey:
    owners = [key for key in keys if key.recognises(draw.tracker)]
    assert len(owners) == 1, f"term {draw.term}: {len(owners)} replicas recognise the slot"
    return owners[0]


# ------------------------------------------------------------ uniqueness, fairness


def test_exactly_one_valid_claim_per_term_over_1000_terms_and_fair_winners(
    keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier
) -> None:
    registry = _registry(keys)
    wins: collections.Counter[str] = collections.Counter()
    seed = SEED
    for term in range(1, 1001):
        _, draw = _term(term, keys, shuffler, verifier, seed)
        owner = _owner(keys, draw)  # every other replica's check fails
        claim = Claim.from_bytes(owner.claim(draw, rng=seeded(term)).to_bytes())
        verify_claim(claim, draw, registry.key_of(claim.replica))
        if term % 4 == 0:  # a rotating non-owner tries its own key on the slot: refused
            other = keys[(keys.index(owner) + 1 + term // 4 % 4) % 5]
            forged = other.prove_claim_with(draw, bytes(64))
            with pytest.raises(ElectionError, match="does not verify"):
                verify_claim(forged, draw, registry.key_of(other.name))
        wins[owner.name] += 1
        seed = hashlib.sha512(claim.to_bytes()).digest()  # chain terms like the store does
    assert sum(wins.values()) == 1000
    result = chisquare([wins[key.name] for key in keys])
    assert result.pvalue > 0.01, (dict(wins), result.pvalue)


def test_every_slot_has_one_owner_and_outputs_are_unlinkable_to_inputs(
    keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier
) -> None:
    for term in range(1, 41):
        published, _ = _term(term, keys, shuffler, verifier)
        inputs = {tracker.to_bytes() for tracker in published.inputs}
        components = {c for t in published.inputs for c in (t.r, t.s)}
        for slot, tracker in enumerate(published.outputs):
            assert tracker.to_bytes() not in inputs
            assert tracker.r not in components and tracker.s not in components
            draw = Draw(term, bytes(64), slot, tracker)
            _owner(keys, draw)  # exactly one recognises it; every non-owner's check fails


def test_permutation_is_uniform() -> None:
    rng = seeded(3)
    counts = collections.Counter(tuple(uniform_permutation(3, rng)) for _ in range(6000))
    assert len(counts) == 6
    assert chisquare(list(counts.values())).pvalue > 0.01


# ------------------------------------------------------------------- forgeries


@pytest.fixture
def round_one(
    keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier
) -> tuple[PublishedShuffle, Draw, ReplicaKey]:
    published, draw = _term(1, keys, shuffler, verifier)
    return published, draw, _owner(keys, draw)


def test_claim_with_wrong_secret_is_refused(
    keys: list[ReplicaKey], round_one: tuple[PublishedShuffle, Draw, ReplicaKey]
) -> None:
    _, draw, owner = round_one
    impostor = ReplicaKey.from_secret(owner.name, hashlib.sha256(b"guess").digest()[:31] + b"\0")
    claim = impostor.prove_claim_with(draw, bytes(64))
    with pytest.raises(ElectionError, match=r"claim proof of .* does not verify"):
        verify_claim(claim, draw, owner.public_key)
    with pytest.raises(ElectionError, match="is not 'replica-"):
        impostor.claim(draw)


def test_claim_replayed_from_another_term_is_refused(
    keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier
) -> None:
    registry = _registry(keys)
    # Find two consecutive terms won by the same replica at the same slot, so the
    # replayed claim names the right slot and only its binding can fail.
    term, previous = 2, _term(1, keys, shuffler, verifier)[1]
    while True:
        draw = _term(term, keys, shuffler, verifier)[1]
        if _owner(keys, draw) is _owner(keys, previous) and draw.slot == previous.slot:
            break
        term, previous = term + 1, draw
    old = _owner(keys, previous).claim(previous)
    with pytest.raises(ElectionError, match=f"claim is for term {term - 1}, not term {term}"):
        verify_claim(old, draw, registry.key_of(old.replica))
    relabelled = replace(old, term=term)
    with pytest.raises(ElectionError, match="does not verify"):
        verify_claim(relabelled, draw, registry.key_of(old.replica))
    # The same term under another beacon (another seed): also bound.
    other_beacon = replace(draw, beacon=hashlib.sha512(b"other").digest())
    with pytest.raises(ElectionError, match="does not verify"):
        verify_claim(_owner(keys, draw).claim(draw), other_beacon, registry.key_of(old.replica))


def test_claim_for_a_slot_not_selected_is_refused(
    keys: list[ReplicaKey], round_one: tuple[PublishedShuffle, Draw, ReplicaKey]
) -> None:
    published, draw, owner = round_one
    other_slot = (draw.slot + 1) % len(published.outputs)
    other_owner = _owner(keys, Draw(1, draw.beacon, other_slot, published.outputs[other_slot]))
    sideways = Draw(1, draw.beacon, other_slot, published.outputs[other_slot])
    claim = other_owner.claim(sideways)  # a genuine proof, but for an unselected slot
    with pytest.raises(ElectionError, match=f"names slot {other_slot} but the beacon"):
        verify_claim(claim, draw, other_owner.public_key)
    # Claiming the selected slot with the other owner's name but the real owner's proof:
    stolen = replace(owner.claim(draw), replica=other_owner.name)
    with pytest.raises(ElectionError, match="does not verify"):
        verify_claim(stolen, draw, other_owner.public_key)


def test_tampered_shuffle_output_is_refused(
    keys: list[ReplicaKey], verifier: Verifier, round_one: tuple[PublishedShuffle, Draw, ReplicaKey]
) -> None:
    published, _, _ = round_one
    attacker = keys[0]
    mine = attacker.tracker_for(1, rng=seeded(99)).tracker
    for outputs in (
        (mine, *published.outputs[1:]),  # an output replaced by a tracker the attacker owns
        published.outputs[::-1],  # reordered
    ):
        tampered = replace(published, outputs=outputs)
        with pytest.raises(AttestationError, match="report data does not bind"):
            verify_shuffle(tampered, term=1, inputs=published.inputs, verifier=verifier)
    dropped = replace(published, outputs=published.outputs[:-1])
    with pytest.raises(ElectionError, match="4 outputs for 5 inputs"):
        verify_shuffle(dropped, term=1, inputs=published.inputs, verifier=verifier)
    duplicated = replace(published, outputs=(*published.outputs[:-1], published.outputs[0]))
    with pytest.raises(ElectionError, match="repeat"):
        verify_shuffle(duplicated, term=1, inputs=published.inputs, verifier=verifier)


def test_shuffle_of_other_inputs_or_term_is_refused(
    keys: list[ReplicaKey], verifier: Verifier, round_one: tuple[PublishedShuffle, Draw, ReplicaKey]
) -> None:
    published, _, _ = round_one
    registered = _trackers(keys, 1, seed=5)
    with pytest.raises(ElectionError, match="input list is not the 5 trackers"):
        verify_shuffle(published, term=1, inputs=registered, verifier=verifier)
    with pytest.raises(ElectionError, match="is for term 1, not term 2"):
        verify_shuffle(published, term=2, inputs=published.inputs, verifier=verifier)
    relabelled = replace(published, term=2)
    with pytest.raises(AttestationError, match="report data"):
        verify_shuffle(relabelled, term=2, inputs=published.inputs, verifier=verifier)


def test_shuffle_without_a_valid_quote_is_refused(
    platform: Platform,
    shuffler_identity: EnclaveIdentity,
    verifier: Verifier,
    round_one: tuple[PublishedShuffle, Draw, ReplicaKey],
) -> None:
    published, _, _ = round_one
    inputs = published.inputs
    with pytest.raises(AttestationError, match="malformed"):
        verify_shuffle(
            replace(published, quote=b"\x00" * 10), term=1, inputs=inputs, verifier=verifier
        )
    # The right measurement, but quoted by a platform the verifier does not trust.
    rogue = Platform.from_secrets(bytes(32), bytes([9]) * 32, bytes([8]) * 32)
    forged = Shuffler(rogue, shuffler_identity, rng=seeded(2)).shuffle(1, inputs)
    with pytest.raises(AttestationError, match="signature does not verify"):
        verify_shuffle(forged, term=1, inputs=inputs, verifier=verifier)
    # A verifier that refuses simulated enclaves refuses this emulation outright.
    strict = Verifier(
        trusted_platform_keys=[platform.attestation_public_key],
        allowed_measurements=[shuffler_identity.measurement],
    )
    with pytest.raises(AttestationError, match="simulated"):
        verify_shuffle(published, term=1, inputs=inputs, verifier=strict)
    # A trusted platform, but an enclave build that is not the shuffler.
    other = Shuffler(platform, platform.identity(OTHER_MEASUREMENT, 1), rng=seeded(2))
    with pytest.raises(AttestationError, match="not allow-listed"):
        verify_shuffle(other.shuffle(1, inputs), term=1, inputs=inputs, verifier=verifier)


# --------------------------------------------------------- registration, trackers


def test_duplicate_or_invalid_registration_is_refused(keys: list[ReplicaKey]) -> None:
    registry = _registry(keys)
    with pytest.raises(ElectionError, match="'replica-0' is already registered"):
        registry.register("replica-0", ReplicaKey.generate("x", rng=seeded(50)).public_key)
    with pytest.raises(ElectionError, match="already registered by 'replica-1'"):
        registry.register("newcomer", keys[1].public_key)
    with pytest.raises(ElectionError, match="not a valid ristretto255 point"):
        registry.register("zero", bytes(32))  # the identity
    with pytest.raises(ElectionError, match="not a valid ristretto255 point"):
        registry.register("junk", b"\xff" * 32)
    with pytest.raises(ElectionError, match="32-byte"):
        registry.register("short", b"\x01" * 31)
    with pytest.raises(ElectionError, match="not registered"):
        registry.key_of("stranger")
    assert len(registry) == 5


def test_tracker_proofs_bind_term_and_replica(keys: list[ReplicaKey]) -> None:
    alice, bob = keys[0], keys[1]
    submission = alice.tracker_for(3, rng=seeded(4))
    verify_submission(TrackerSubmission.from_bytes(submission.to_bytes()), alice.public_key, 3)
    with pytest.raises(ElectionError, match="is for term 3, not term 4"):
        verify_submission(submission, alice.public_key, 4)
    with pytest.raises(ElectionError, match="does not verify"):
        verify_submission(replace(submission, term=4), alice.public_key, 4)
    with pytest.raises(ElectionError, match="does not verify"):  # alice's tracker as bob's
        verify_submission(replace(submission, replica=bob.name), bob.public_key, 3)
    # Stuffing: anyone can build (r*G, r*K_bob), but cannot prove it without k_bob.
    stuffed = bob.tracker_with(3, bytes([5]) + bytes(31), bytes(64))
    with pytest.raises(ElectionError, match="does not verify"):
        verify_submission(replace(stuffed, replica=alice.name), alice.public_key, 3)


def test_invalid_points_in_trackers_are_refused() -> None:
    good = ReplicaKey.generate("a", rng=seeded(8)).public_key
    with pytest.raises(ElectionError, match="tracker R is not a valid"):
        Tracker.from_bytes(bytes(32) + good)
    with pytest.raises(ElectionError, match="64 bytes"):
        Tracker.from_bytes(good)
    with pytest.raises(ElectionError, match="malformed published shuffle"):
        PublishedShuffle.from_bytes(b"\xa0")


# ----------------------------------------------------- determinism and secrecy


def test_deterministic_twins_repeat_exactly(
    keys: list[ReplicaKey], platform: Platform, shuffler_identity: EnclaveIdentity
) -> None:
    a = keys[0].tracker_with(1, bytes([3]) + bytes(31), bytes(64))
    assert a == keys[0].tracker_with(1, bytes([3]) + bytes(31), bytes(64))
    inputs = _trackers(keys, 1, seed=6)
    runs = [
        Shuffler(platform, shuffler_identity, rng=seeded(11)).shuffle(1, inputs) for _ in range(2)
    ]
    assert runs[0] == runs[1]
    draw = runs[0].draw(SEED)
    owner = _owner(keys, draw)
    assert owner.claim_with(draw, bytes(64)) == owner.claim_with(draw, bytes(64))
    assert owner.claim_with(draw, bytes(64)) != owner.claim_with(draw, bytes([1]) * 64)


def test_secret_never_in_repr(keys: list[ReplicaKey]) -> None:
    key = keys[0]
    text = repr(key) + str(key)
    assert key.secret.hex() not in text and repr(key.secret) not in text
    with pytest.raises(ElectionError) as caught:
        ReplicaKey.from_secret("x", b"\xff" * 32)
    assert "ff" not in str(caught.value)


def test_shuffler_runs_behind_the_enclave_boundary(
    platform: Platform, keys: list[ReplicaKey]
) -> None:
    # The same code behind tee.Enclave, as the cluster will run it: quote checks out
    # under a verifier that allows the measured shuffler build.
    import tempfile
    from pathlib import Path

    from tee import SECURITY_VERSION, measure_code
    from tee._encoding import encode_canonical

    with tempfile.TemporaryDirectory() as tmp:
        platform_dir = Path(tmp) / "platform"
        real = Platform.open(platform_dir)
        verifier = Verifier(
            trusted_platform_keys=[real.attestation_public_key],
            allowed_measurements=[measure_code()],
            min_security_version=SECURITY_VERSION,
            allow_simulated=True,
        )
        inputs = _trackers(keys, 1, seed=12)
        init = encode_canonical({"platform_dir": str(platform_dir)})
        with Enclave("tee.ssle:shuffler_ecalls", init) as enclave:
            raw = enclave.call("shuffle", encode_canonical([1, [t.to_bytes() for t in inputs]]))
            with pytest.raises(ElectionError, match="malformed shuffle request"):
                enclave.call("shuffle", b"\x01")
        published = PublishedShuffle.from_bytes(raw)
        verify_shuffle(published, term=1, inputs=inputs, verifier=verifier)
        _owner(keys, published.draw(SEED))
