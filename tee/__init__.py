"""Emulated enclave: measurement, sealing, quotes, verification, KMS, boundary."""

__all__: list[str] = []
