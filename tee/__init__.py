"""Emulated enclave: platform, measurement, sealing, quotes, verification, attested
channel, KMS, monotonic counters and the ecall boundary.

There is no hardware isolation here (see SECURITY.md): the interfaces and the
protocol are those of a real TEE, so the rest of otrace is written against them.
"""

from tee._channel import AttestedChannel, ChannelKey, EnclaveHello, accept_enclave, open_channel
from tee._counter import FreshnessCounter, MonotonicCounter
from tee._identity import (
    TRUSTED_PACKAGES,
    EnclaveIdentity,
    measure_code,
    signer_id,
    trusted_package_roots,
)
from tee._platform import Platform
from tee._quote import Quote, report_data_for
from tee._sealing import Sealer, SealPolicy, StateSealer
from tee._verifier import NonceRegistry, VerifiedEnclave, Verifier

__all__ = [
    "TRUSTED_PACKAGES",
    "AttestedChannel",
    "ChannelKey",
    "EnclaveHello",
    "EnclaveIdentity",
    "FreshnessCounter",
    "MonotonicCounter",
    "NonceRegistry",
    "Platform",
    "Quote",
    "SealPolicy",
    "Sealer",
    "StateSealer",
    "VerifiedEnclave",
    "Verifier",
    "accept_enclave",
    "measure_code",
    "open_channel",
    "report_data_for",
    "signer_id",
    "trusted_package_roots",
]
