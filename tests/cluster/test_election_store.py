"""Election state over the shared SQL store (SQLite and PostgreSQL), the lease and fencing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

from collector import ElectionStore, check_fence
from oram_store import OramParams, PathOram, Read, SqlBucketStore, Write
from otrace.errors import AttestationError, ElectionError, FencingError
from tee import Sealer, Verifier
from tee.ssle import Claim, Draw, ReplicaKey, Shuffler

from .conftest import FakeClock, seeded

LEASE = 5.0
ELECTION = 3.0


@pytest.fixture
def bucket_store(store_url: str) -> Iterator[SqlBucketStore]:
    store = SqlBucketStore(store_url)
    yield store
    store.close()


@pytest.fixture
def election(bucket_store: SqlBucketStore, verifier: Verifier, clock: FakeClock) -> ElectionStore:
    return ElectionStore(
        bucket_store,
        verifier=verifier,
        lease_seconds=LEASE,
        election_seconds=ELECTION,
        clock=clock,
    )


def _registered(election: ElectionStore, keys: list[ReplicaKey]) -> dict[str, ReplicaKey]:
    for key in keys:
        election.register(key.name, key.public_key)
    return {key.name: key for key in keys}


def _submit_all(election: ElectionStore, keys: list[ReplicaKey], term: int, *, seed: int) -> None:
    rng = seeded(seed)  # one source for all: every tracker gets its own r
    for key in keys:
        election.submit_tracker(key.tracker_for(term, rng=rng))


def _elect(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, *, rng_seed: int = 0
) -> tuple[int, Draw, ReplicaKey]:
    """Run one term end to end through the store; return it, its draw and its leader."""
    term = election.open_term()
    rng = seeded(1000 * term + rng_seed)
    for key in keys:
        election.submit_tracker(key.tracker_for(term, rng=rng))
    draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
    (owner,) = [key for key in keys if key.recognises(draw.tracker)]
    state = election.claim(owner.claim(draw, rng=rng))
    assert state.term == term and state.leader == owner.name
    return term, draw, owner


def test_a_term_from_open_to_claim(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, clock: FakeClock
) -> None:
    _registered(election, keys)
    assert election.replicas() == {key.name: key.public_key for key in keys}
    assert election.status().term == 0
    term, draw, owner = _elect(election, keys, shuffler)
    assert term == 1
    status = election.status()
    assert (status.leader, status.shuffled, status.expires_at) == (
        owner.name,
        True,
        clock.now + LEASE,
    )
    assert election.draw(1) == draw  # re-verified from what is stored
    # Exactly one claim per term, even a second valid-looking one.
    with pytest.raises(ElectionError, match="term 1 is already claimed"):
        election.claim(owner.claim(draw))
    clock.now += 4.0
    assert election.heartbeat(1, owner.name).expires_at == clock.now + LEASE
    assert election.open_term() == 1  # the lease is live: no new term


def test_registration_is_unique_and_validated(
    election: ElectionStore, keys: list[ReplicaKey]
) -> None:
    _registered(election, keys[:2])
    with pytest.raises(ElectionError, match="'replica-0' is already registered"):
        election.register("replica-0", keys[2].public_key)
    with pytest.raises(ElectionError, match="already registered by 'replica-1'"):
        election.register("another", keys[1].public_key)
    with pytest.raises(ElectionError, match="not a valid ristretto255 point"):
        election.register("identity", bytes(32))
    assert sorted(election.replicas()) == ["replica-0", "replica-1"]


def test_trackers_are_fresh_proven_and_only_while_the_term_is_open(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler
) -> None:
    _registered(election, keys[:3])
    with pytest.raises(ElectionError, match="term 1 is not open"):
        election.submit_tracker(keys[0].tracker_for(1))
    term = election.open_term()
    first = keys[0].tracker_for(term, rng=seeded(1))
    election.submit_tracker(first)
    with pytest.raises(ElectionError, match="already submitted a tracker for term 1"):
        election.submit_tracker(keys[0].tracker_for(term))
    with pytest.raises(ElectionError, match="does not verify"):
        election.submit_tracker(replace(keys[1].tracker_for(term), replica=keys[2].name))
    with pytest.raises(ElectionError, match="not registered"):
        election.submit_tracker(keys[4].tracker_for(term))
    election.submit_tracker(keys[1].tracker_for(term))
    draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
    assert 0 <= draw.slot < 2
    with pytest.raises(ElectionError, match="shuffled"):
        election.submit_tracker(keys[2].tracker_for(term))


def test_a_tracker_is_never_accepted_twice(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, clock: FakeClock
) -> None:
    _registered(election, keys[:2])
    term = election.open_term()
    old = keys[0].tracker_with(term, bytes([7]) + bytes(31), bytes(64))
    election.submit_tracker(old)
    clock.now += ELECTION + 1  # the term lapses unclaimed
    assert election.open_term() == 2
    replay = keys[0].tracker_with(2, bytes([7]) + bytes(31), bytes(64))  # same r, new proof
    with pytest.raises(ElectionError, match="submitted before"):
        election.submit_tracker(replay)


def test_bad_shuffles_are_not_published(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, platform: object
) -> None:
    _registered(election, keys)
    term = election.open_term()
    _submit_all(election, keys, term, seed=3)
    inputs = election.trackers(term)
    published = shuffler.shuffle(term, inputs)
    with pytest.raises(AttestationError, match="report data"):
        election.publish_shuffle(replace(published, outputs=published.outputs[::-1]))
    with pytest.raises(ElectionError, match="input list is not"):
        election.publish_shuffle(shuffler.shuffle(term, inputs[:4]))
    with pytest.raises(ElectionError, match="the current term is 1"):
        election.publish_shuffle(shuffler.shuffle(term + 1, inputs))
    assert election.status().shuffled is False
    election.publish_shuffle(published)
    with pytest.raises(ElectionError, match="already shuffled"):
        election.publish_shuffle(shuffler.shuffle(term, inputs))


def test_forged_claims_change_nothing(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler
) -> None:
    _registered(election, keys)
    term = election.open_term()
    _submit_all(election, keys, term, seed=4)
    with pytest.raises(ElectionError, match="no published shuffle"):
        election.claim(
            keys[0].prove_claim_with(
                Draw(term, bytes(64), 0, election.trackers(term)[0]), bytes(64)
            )
        )
    draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
    (owner,) = [key for key in keys if key.recognises(draw.tracker)]
    others = [key for key in keys if key is not owner]
    with pytest.raises(ElectionError, match="does not verify"):
        election.claim(others[0].prove_claim_with(draw, bytes(64)))
    with pytest.raises(ElectionError, match="does not verify"):  # owner's proof, other's name
        election.claim(replace(owner.claim(draw), replica=others[0].name))
    with pytest.raises(ElectionError, match="current term is 1"):
        election.claim(replace(owner.claim(draw), term=2))
    assert election.status().leader is None
    election.claim(owner.claim(draw))
    assert election.status().leader == owner.name


def test_tampered_rows_are_caught_when_read_back(
    election: ElectionStore,
    bucket_store: SqlBucketStore,
    keys: list[ReplicaKey],
    shuffler: Shuffler,
) -> None:
    _registered(election, keys)
    _elect(election, keys, shuffler)
    with bucket_store.engine.begin() as conn:
        row = conn.execute(
            sa.text("SELECT tracker FROM election_trackers WHERE replica = 'replica-0'")
        ).one()
        swapped = bytes(row[0])[32:] + bytes(row[0])[:32]
        conn.execute(
            sa.text("UPDATE election_trackers SET tracker = :t WHERE replica = 'replica-0'"),
            {"t": swapped},
        )
    with pytest.raises(ElectionError, match="does not verify"):
        election.draw(1)


def test_lease_lapse_starts_a_new_term_and_deposes_the_old_leader(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, clock: FakeClock
) -> None:
    _registered(election, keys)
    _, _, first = _elect(election, keys, shuffler)
    clock.now += LEASE - 0.5
    election.heartbeat(1, first.name)
    clock.now += LEASE + 0.1  # no heartbeat in time
    with pytest.raises(FencingError, match="lapsed"):
        election.heartbeat(1, first.name)
    term, _, second = _elect(election, keys, shuffler, rng_seed=1)
    assert term == 2
    with pytest.raises(
        FencingError, match="stale term: this writer leads term 1 but the store is at term 2"
    ):
        election.heartbeat(1, first.name)
    if second is not first:
        with pytest.raises(FencingError, match="led by"):
            election.heartbeat(2, first.name)
    election.heartbeat(2, second.name)


def test_an_unclaimed_term_lapses_after_the_election_timeout(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler, clock: FakeClock
) -> None:
    _registered(election, keys)
    term = election.open_term()
    _submit_all(election, keys, term, seed=5)
    draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
    (owner,) = [key for key in keys if key.recognises(draw.tracker)]
    assert election.open_term() == 1
    clock.now += ELECTION + 0.1  # the winner crashed before claiming
    with pytest.raises(ElectionError, match="lapsed before it was claimed"):
        election.claim(owner.claim(draw))
    assert election.open_term() == 2
    assert election.status().leader is None


def _oram(store: SqlBucketStore) -> PathOram:
    return PathOram.create(
        store,
        OramParams("spans", blocks=16, block_size=64),
        key=bytes(range(32)),
        sealer=Sealer.from_key(bytes(range(32, 64))),
        cache_levels=1,
        rng=seeded(6),
    )


def test_a_deposed_leaders_oram_commit_fails(
    election: ElectionStore,
    bucket_store: SqlBucketStore,
    keys: list[ReplicaKey],
    shuffler: Shuffler,
    clock: FakeClock,
) -> None:
    _registered(election, keys)
    _, _, first = _elect(election, keys, shuffler)
    old_writer = _oram(bucket_store)
    old_writer.access_batch([Write(1, b"a" * 64)], in_transaction=election.fence(1, first.name))
    # A replica that is not the leader cannot commit either.
    bystander = next(key for key in keys if key is not first)
    with pytest.raises(FencingError, match="led by"):
        old_writer.access_batch(
            [Write(1, b"x" * 64)], in_transaction=election.fence(1, bystander.name)
        )
    # The leader stalls past its lease; a new term is elected while it is away.
    clock.now += LEASE + 1
    with pytest.raises(FencingError, match="lapsed"):
        old_writer.access_batch([Write(1, b"b" * 64)], in_transaction=election.fence(1, first.name))
    _, _, second = _elect(election, keys, shuffler, rng_seed=2)
    with pytest.raises(FencingError, match="stale term"):
        old_writer.access_batch([Write(1, b"c" * 64)], in_transaction=election.fence(1, first.name))
    # Nothing of the refused commits landed: the new leader reopens and sees "a".
    new_writer = PathOram.open(
        bucket_store,
        "spans",
        key=bytes(range(32)),
        sealer=Sealer.from_key(bytes(range(32, 64))),
        cache_levels=1,
    )
    hook = election.fence(2, second.name)
    assert new_writer.access_batch([Read(1)], in_transaction=hook) == [b"a" * 64]
    new_writer.access_batch([Write(1, b"d" * 64)], in_transaction=hook)


def test_check_fence_on_a_plain_connection(
    election: ElectionStore,
    bucket_store: SqlBucketStore,
    keys: list[ReplicaKey],
    shuffler: Shuffler,
    clock: FakeClock,
) -> None:
    _registered(election, keys)
    with bucket_store.engine.begin() as conn, pytest.raises(FencingError, match="led by nobody"):
        check_fence(conn, 0, "replica-0", now=clock.now)
    _, _, leader = _elect(election, keys, shuffler)
    with bucket_store.engine.begin() as conn:
        check_fence(conn, 1, leader.name, now=clock.now)
        with pytest.raises(FencingError, match="store is at term 1"):
            check_fence(conn, 2, leader.name, now=clock.now)


def test_two_stores_on_one_database_agree(
    bucket_store: SqlBucketStore,
    store_url: str,
    verifier: Verifier,
    keys: list[ReplicaKey],
    shuffler: Shuffler,
    clock: FakeClock,
) -> None:
    # Two replicas, two engines, one database: the second sees the first's claim.
    one = ElectionStore(bucket_store, verifier=verifier, clock=clock)
    other_store = SqlBucketStore(store_url)
    try:
        two = ElectionStore(other_store, verifier=verifier, clock=clock)
        _registered(one, keys)
        _, draw, leader = _elect(one, keys, shuffler)
        assert two.status().leader == leader.name
        assert two.draw(1) == draw
        with pytest.raises(ElectionError, match="already claimed"):
            two.claim(leader.claim(draw))
    finally:
        other_store.close()


def test_concurrent_claims_yield_one_leader(
    election: ElectionStore, keys: list[ReplicaKey], shuffler: Shuffler
) -> None:
    _registered(election, keys)
    term = election.open_term()
    _submit_all(election, keys, term, seed=8)
    draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
    (owner,) = [key for key in keys if key.recognises(draw.tracker)]
    claims = [owner.claim_with(draw, bytes([i]) * 64) for i in range(4)]  # four valid proofs
    outcomes: list[str] = []

    def attempt(claim: Claim) -> None:
        try:
            election.claim(claim)
            outcomes.append("won")
        except ElectionError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(claim,)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("won") == 1, outcomes
    assert all("already claimed" in o for o in outcomes if o != "won"), outcomes
