"""Emulated enclave: platform, measurement, sealing, quotes, verification, attested
channel, KMS (with derived FaaS hop secrets), the producer CA, monotonic counters
and the ecall boundary.

There is no hardware isolation here (see SECURITY.md): the interfaces and the
protocol are those of a real TEE, so the rest of otrace is written against them.
"""

from tee._channel import AttestedChannel, ChannelKey, EnclaveHello, accept_enclave, open_channel
from tee._counter import FreshnessCounter, MonotonicCounter
from tee._enclave import AuditHook, Ecall, EcallTable, Enclave
from tee._files import read_private_file, write_private_file
from tee._grpc_server import GrpcServer
from tee._identity import (
    SECURITY_VERSION,
    TRUSTED_PACKAGES,
    EnclaveIdentity,
    measure_code,
    signer_id,
    trusted_package_roots,
)
from tee._kms import Kms, ReleaseRequest, ReleaseResponse
from tee._kms_client import KmsClient
from tee._kms_service import (
    GrpcKmsTransport,
    KmsTransport,
    LocalKmsTransport,
    error_from_rpc,
    serve_kms,
)
from tee._platform import Platform
from tee._policy import (
    KmsPolicy,
    PolicyRule,
    SignedPolicy,
    hop_secret_name,
    load_or_create_owner_key,
    sign_policy,
)
from tee._producer_ca import MEASUREMENT_URI, ProducerCa, producer_key_digest
from tee._quote import Quote, report_data_for
from tee._sealing import Sealer, SealPolicy, StateSealer
from tee._verifier import NonceRegistry, VerifiedEnclave, Verifier

__all__ = [
    "MEASUREMENT_URI",
    "SECURITY_VERSION",
    "TRUSTED_PACKAGES",
    "AttestedChannel",
    "AuditHook",
    "ChannelKey",
    "Ecall",
    "EcallTable",
    "Enclave",
    "EnclaveHello",
    "EnclaveIdentity",
    "FreshnessCounter",
    "GrpcKmsTransport",
    "GrpcServer",
    "Kms",
    "KmsClient",
    "KmsPolicy",
    "KmsTransport",
    "LocalKmsTransport",
    "MonotonicCounter",
    "NonceRegistry",
    "Platform",
    "PolicyRule",
    "ProducerCa",
    "Quote",
    "ReleaseRequest",
    "ReleaseResponse",
    "SealPolicy",
    "Sealer",
    "SignedPolicy",
    "StateSealer",
    "VerifiedEnclave",
    "Verifier",
    "accept_enclave",
    "error_from_rpc",
    "hop_secret_name",
    "load_or_create_owner_key",
    "measure_code",
    "open_channel",
    "producer_key_digest",
    "read_private_file",
    "report_data_for",
    "serve_kms",
    "sign_policy",
    "signer_id",
    "trusted_package_roots",
    "write_private_file",
]
