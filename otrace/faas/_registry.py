"""The manifests a host serves: deployed once, verified once, looked up by hash per hop.

As in Clemmys, a chain is deployed before it is invoked: the owner's signed
manifest is registered with every host of the chain (each function host and the
gateway), which checks the owner signature against its pinned owners, the
manifest's own expiry and that no other manifest holds the chain id, then keeps
it by its hash. Hops carry only the `manifest_hash` (plaintext metadata, bound
by the AES-GCM associated data); a hash the host was not deployed with is
refused as `unknown manifest` before anything else about the message is trusted.

One manifest per chain id: a second, different manifest under a held chain id
is refused rather than replacing the first, so what a request in flight is
checked against cannot change under it (a new version of a chain is deployed to
freshly started hosts). Registering the same signed manifest again is a no-op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable

from otrace.errors import ChainViolation
from otrace.faas._manifest import ChainManifest, SignedManifest
from otrace.faas._message import HopMetadata

__all__ = ["ManifestRegistry"]


class ManifestRegistry:
    """Verified manifests by hash, one per chain id. Reads are lock-free (never replaced)."""

    __slots__ = ("_by_chain", "_by_hash", "_clock", "_lock", "_owners")

    def __init__(
        self,
        owners: Collection[bytes],
        manifests: Iterable[SignedManifest] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._owners = frozenset(owners)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_hash: dict[bytes, ChainManifest] = {}
        self._by_chain: dict[str, bytes] = {}
        for signed in manifests:
            self.register(signed)

    def __repr__(self) -> str:
        return f"ManifestRegistry(chains={sorted(self._by_chain)})"

    def __len__(self) -> int:
        return len(self._by_hash)

    def register(self, signed: SignedManifest) -> ChainManifest:
        """Verify `signed` and keep it; `ChainViolation` if forged, expired or conflicting."""
        manifest = signed.verified(self._owners)
        if manifest.digest != signed.digest:  # not canonical: hops could not name it
            raise ChainViolation("chain manifest bytes are not in canonical form")
        if int(self._clock() * 1000) > manifest.not_after_ms:
            raise ChainViolation(f"manifest of chain {manifest.chain_id!r} has expired")
        with self._lock:
            held = self._by_chain.get(manifest.chain_id)
            if held is None:
                self._by_hash[signed.digest] = manifest
                self._by_chain[manifest.chain_id] = signed.digest
            elif held != signed.digest:
                raise ChainViolation(
                    f"chain {manifest.chain_id!r} is already deployed here with manifest "
                    f"{held.hex()[:16]}; another manifest under the same chain id is refused "
                    "(deploy a new version to freshly started hosts)"
                )
            return self._by_hash[signed.digest]

    def named_by(self, meta: HopMetadata) -> ChainManifest:
        """The manifest a hop names, or `ChainViolation` (unknown manifest).

        A plain dict lookup: manifest hashes are public (they travel in plaintext).
        """
        manifest = self._by_hash.get(meta.manifest_hash)
        if manifest is None:
            raise ChainViolation(
                f"unknown manifest: hop {meta.step} of request {meta.request_id.hex()} names "
                f"manifest {meta.manifest_hash.hex()[:16]}, which was not deployed to this host"
            )
        return manifest
