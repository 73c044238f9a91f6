"""A small trusted application for boundary tests; it runs inside the enclave process."""

from __future__ import annotations

import os
import time

from otrace.errors import IntegrityError
from tee import EcallTable, Sealer


def ecalls(init: bytes) -> EcallTable:
    """Echo, report the process id, seal with the key given at init, and fail in two ways."""
    sealer = Sealer.from_key(init)

    def fail_plainly(payload: bytes) -> bytes:
        raise ValueError(f"internal detail {init.hex()}")

    def fail_integrity(payload: bytes) -> bytes:
        raise IntegrityError("bucket 7 failed authentication")

    return {
        "echo": lambda payload: payload,
        "pid": lambda payload: str(os.getpid()).encode(),
        "seal": lambda payload: sealer.seal(payload, b"boundary-test"),
        "fail_plainly": fail_plainly,
        "fail_integrity": fail_integrity,
        "sleep": lambda payload: (time.sleep(float(payload.decode())), payload)[1],
    }


def broken(init: bytes) -> EcallTable:
    raise IntegrityError("sealed state failed authentication")
