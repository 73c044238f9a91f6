"""The shuffler enclave: re-randomise and permute a term's trackers, attest the result.

For term t with input trackers T_1..T_n (in the registry's canonical order) the
shuffler draws fresh non-zero scalars s_j and a uniform permutation pi, outputs

    out[j] = (s_j * R_pi(j), s_j * S_pi(j))

and quotes the transcript digest as its report data:

    report_data = SHA-512("otrace/ssle/v1/shuffle\\0" || CBOR[t, [T_1..T_n], [out_1..out_n]])

(trackers as 64-byte `R || S` strings). Anyone checks the quote with a
`tee.Verifier` that allows the shuffler's measurement, and that the inputs are
exactly the term's registered trackers (`verify_shuffle`). Nobody outside the
enclave can link an output to an input (DDH): the enclave is trusted for
unlinkability, never for who wins, since an owner's claim is checked by proof.

`shuffler_ecalls` is the entry point that runs the shuffler behind `tee.Enclave`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from otrace.errors import ElectionError
from tee._enclave import EcallTable
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_int
from tee._identity import SECURITY_VERSION, EnclaveIdentity, measure_code
from tee._platform import Platform
from tee._verifier import Verifier
from tee.ssle._group import RandomSource, mul, random_scalar, scalar
from tee.ssle._protocol import Draw, Tracker, beacon_for, slot_for

__all__ = [
    "PublishedShuffle",
    "Shuffler",
    "shuffler_ecalls",
    "transcript_digest",
    "uniform_permutation",
    "verify_shuffle",
]

_SHUFFLE_LABEL = b"otrace/ssle/v1/shuffle\x00"
_VERSION = 1
MAX_TRACKERS = 4096


@dataclass(frozen=True, slots=True)
class PublishedShuffle:
    """A term's shuffle as published: inputs, outputs and the shuffler's quote."""

    term: int
    inputs: tuple[Tracker, ...]
    outputs: tuple[Tracker, ...]
    quote: bytes

    @property
    def digest(self) -> bytes:
        """The transcript digest the quote's report data must equal."""
        return transcript_digest(self.term, self.inputs, self.outputs)

    def draw(self, seed: bytes) -> Draw:
        """The beacon, slot and selected tracker for this shuffle and the term's seed."""
        beacon = beacon_for(self.term, seed, self.digest)
        slot = slot_for(beacon, len(self.outputs))
        return Draw(self.term, beacon, slot, self.outputs[slot])

    def to_bytes(self) -> bytes:
        return encode_canonical(
            [_VERSION, self.term, _wire(self.inputs), _wire(self.outputs), self.quote]
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PublishedShuffle:
        """Parse and validate every point; says nothing about the quote (`verify_shuffle`)."""
        try:
            fields = decode_canonical(raw)
            if not isinstance(fields, list) or len(fields) != 5 or fields[0] != _VERSION:
                raise ValueError("expected [1, term, inputs, outputs, quote]")
            return cls(
                expect_int(fields[1], "term"),
                _trackers(fields[2], "input tracker"),
                _trackers(fields[3], "output tracker"),
                expect_bytes(fields[4], "quote"),
            )
        except ValueError as exc:
            raise ElectionError(f"malformed published shuffle: {exc}") from None


class Shuffler:
    """The shuffler enclave's logic: holds the platform that quotes its identity."""

    __slots__ = ("_identity", "_platform", "_rng")

    def __init__(
        self,
        platform: Platform,
        identity: EnclaveIdentity,
        *,
        rng: RandomSource = secrets.token_bytes,
    ) -> None:
        self._platform = platform
        self._identity = identity
        self._rng = rng

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def shuffle(self, term: int, inputs: tuple[Tracker, ...]) -> PublishedShuffle:
        """Re-randomise every tracker with a fresh scalar, permute uniformly, quote."""
        _check_inputs(inputs)
        scalars = [random_scalar(self._rng) for _ in inputs]
        return self.shuffle_with(term, inputs, scalars, uniform_permutation(len(inputs), self._rng))

    def shuffle_with(
        self,
        term: int,
        inputs: tuple[Tracker, ...],
        scalars: list[bytes],
        permutation: list[int],
    ) -> PublishedShuffle:
        """Deterministic twin of `shuffle`: output j is input permutation[j] times scalars[j]."""
        _check_inputs(inputs)
        if sorted(permutation) != list(range(len(inputs))) or len(scalars) != len(inputs):
            raise ElectionError("a shuffle needs one scalar per tracker and a permutation of them")
        outputs = tuple(
            Tracker(mul(s, inputs[i].r), mul(s, inputs[i].s))
            for s, i in zip((scalar(s, "re-randomiser") for s in scalars), permutation, strict=True)
        )
        digest = transcript_digest(term, inputs, outputs)
        quote = self._platform.quote(self._identity, digest).to_bytes()
        return PublishedShuffle(term, inputs, outputs, quote)


def verify_shuffle(
    published: PublishedShuffle,
    *,
    term: int,
    inputs: tuple[Tracker, ...],
    verifier: Verifier,
) -> EnclaveIdentity:
    """Accept `published` only as term `term`'s attested shuffle of exactly `inputs`.

    The quote must verify under `verifier` (trusted platform, allowed shuffler
    measurement) over the transcript digest: any changed input, output, order or
    term changes the digest and fails there (`AttestationError`). Returns the
    shuffler's identity.
    """
    if published.term != term:
        raise ElectionError(f"the published shuffle is for term {published.term}, not term {term}")
    if _wire(published.inputs) != _wire(inputs):
        raise ElectionError(
            f"the shuffle's input list is not the {len(inputs)} trackers registered for term {term}"
        )
    if len(published.outputs) != len(inputs):
        raise ElectionError(
            f"the shuffle has {len(published.outputs)} outputs for {len(inputs)} inputs"
        )
    if len(set(_wire(published.outputs))) != len(published.outputs):
        raise ElectionError("the shuffle's outputs repeat a tracker")
    return verifier.verify_report(published.quote, published.digest)


def transcript_digest(
    term: int, inputs: tuple[Tracker, ...], outputs: tuple[Tracker, ...]
) -> bytes:
    """SHA-512 over the domain label and CBOR[term, inputs, outputs]: the quote's report data."""
    message = encode_canonical([term, _wire(inputs), _wire(outputs)])
    return hashlib.sha512(_SHUFFLE_LABEL + message).digest()


def uniform_permutation(count: int, rng: RandomSource) -> list[int]:
    """A uniformly random permutation of range(count): Fisher-Yates with rejection sampling."""
    items = list(range(count))
    for i in range(count - 1, 0, -1):
        j = _below(i + 1, rng)
        items[i], items[j] = items[j], items[i]
    return items


def _below(bound: int, rng: RandomSource) -> int:
    # Draw 8 bytes; reject the top partial range so every residue is equally likely.
    limit = (1 << 64) - (1 << 64) % bound
    while True:
        value = int.from_bytes(rng(8), "big")
        if value < limit:
            return value % bound


def shuffler_ecalls(init: bytes) -> EcallTable:
    """`tee.Enclave` entry point: init is CBOR {"platform_dir": str}; one ecall, "shuffle".

    shuffle  CBOR [term, [tracker(64), ...]]  ->  `PublishedShuffle.to_bytes()`
    """
    config = decode_canonical(init)
    if not isinstance(config, dict) or not isinstance(config.get("platform_dir"), str):
        raise ElectionError('the shuffler init is CBOR {"platform_dir": str}')
    platform = Platform.open(Path(config["platform_dir"]))
    shuffler = Shuffler(platform, platform.identity(measure_code(), SECURITY_VERSION))

    def shuffle(payload: bytes) -> bytes:
        try:
            request = decode_canonical(payload)
            if not isinstance(request, list) or len(request) != 2:
                raise ValueError("expected [term, trackers]")
            term = expect_int(request[0], "term")
            inputs = _trackers(request[1], "input tracker")
        except ValueError as exc:
            raise ElectionError(f"malformed shuffle request: {exc}") from None
        return shuffler.shuffle(term, inputs).to_bytes()

    return {"shuffle": shuffle}


def _check_inputs(inputs: tuple[Tracker, ...]) -> None:
    if not 0 < len(inputs) <= MAX_TRACKERS:
        raise ElectionError(f"a shuffle takes 1 to {MAX_TRACKERS} trackers, not {len(inputs)}")
    if len(set(_wire(inputs))) != len(inputs):
        raise ElectionError("the shuffle's inputs repeat a tracker")


def _wire(trackers: tuple[Tracker, ...]) -> list[bytes]:
    return [t.to_bytes() for t in trackers]


def _trackers(value: object, what: str) -> tuple[Tracker, ...]:
    if not isinstance(value, list) or len(value) > MAX_TRACKERS:
        raise ValueError(f"{what}s must be a list of at most {MAX_TRACKERS}")
    return tuple(Tracker.from_bytes(item, what) for item in value)
