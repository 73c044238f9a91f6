"""Single Secret Leader Election (Boneh, Eskandarian, Hanzlik, Greco 2020), DDH
construction over ristretto255 with the shuffle done by an attested enclave.

    key = ReplicaKey.generate("replica-a")              # K = k*G, registered once
    sub = key.tracker_for(term)                          # (r*G, k*r*G) + proof
    published = shuffler.shuffle(term, trackers)         # inside the shuffler enclave
    verify_shuffle(published, term=term, inputs=trackers, verifier=verifier)
    draw = published.draw(seed)                          # beacon -> slot -> tracker
    if key.recognises(draw.tracker):
        claim = key.claim(draw)                          # Chaum-Pedersen DLEQ proof
    verify_claim(claim, draw, registry.key_of(claim.replica))

Every refusal is an `otrace.errors.ElectionError`, except a quote that fails
verification, which is an `AttestationError`. Encodings and domain labels are in
docs/ARCHITECTURE.md ("Leader election (SSLE)").
"""

from tee.ssle._dleq import DleqProof
from tee.ssle._protocol import (
    BEACON_SIZE,
    Claim,
    Draw,
    Registry,
    ReplicaKey,
    Tracker,
    TrackerSubmission,
    beacon_for,
    check_registration,
    slot_for,
    verify_claim,
    verify_submission,
)
from tee.ssle._shuffle import (
    PublishedShuffle,
    Shuffler,
    shuffler_ecalls,
    transcript_digest,
    uniform_permutation,
    verify_shuffle,
)

__all__ = [
    "BEACON_SIZE",
    "Claim",
    "DleqProof",
    "Draw",
    "PublishedShuffle",
    "Registry",
    "ReplicaKey",
    "Shuffler",
    "Tracker",
    "TrackerSubmission",
    "beacon_for",
    "check_registration",
    "shuffler_ecalls",
    "slot_for",
    "transcript_digest",
    "uniform_permutation",
    "verify_claim",
    "verify_shuffle",
    "verify_submission",
]
