"""Node settings, loaded once at the CLI edge: flags > `OTRACE_*` env > TOML file > defaults.

Library code receives a frozen `Settings` and never reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from otrace.errors import ConfigError

__all__ = ["Settings", "load_settings", "parse_duration", "parse_size"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZES = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `otrace serve` needs; defaults give a working single node."""

    data_dir: Path = Path("otrace-data")
    store: str = ""  # SQLAlchemy URL; empty means SQLite inside data_dir
    platform_dir: Path = Path("~/.otrace/platform")
    otlp_grpc: str = "127.0.0.1:4317"
    otlp_http: str = "127.0.0.1:4318"
    query: str = "127.0.0.1:16685"
    metrics: str = "127.0.0.1:8888"
    storage: str = "oram"  # oram | encrypted
    max_request_bytes: int = 16 << 20
    epoch_ms: int = 200
    oram_blocks: int = 1 << 16
    # 0: 4048 B (oram_store.DEFAULT_BLOCK_SIZE) for a new store; an existing store keeps
    # the size it was created with. A value other than 0 must match an existing store.
    block_size: int = 0
    oram_batch: int = 32
    cache_levels: int = 8
    # Epoch builder processes (parse, keywords, packing, index segments, merges) beside the
    # enclave's writer; epochs are built side by side, one per worker.
    build_workers: int = 2
    max_pending_requests: int = 256
    max_journal_depth: int = 4096  # journal entries not yet in the ORAM before ingest sheds
    retention: int = 7 * 86400  # seconds; flags and files take durations such as 7d
    trace_reads: int = 16  # ORAM reads every trace lookup spends
    search_reads: int = 64  # ORAM reads every search spends (half finding, half fetching)
    analyst: str = "admin"  # name in the analyst credential written on first start
    unindexed_attributes: str = ""  # comma-separated attribute keys stored but not indexed
    auth_token: str = dataclasses.field(default="", repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # mTLS with the platform's producer CA (tee.ProducerCa): only attested producers export.
    require_attested_producers: bool = False
    # Cluster replica (`otrace serve --replica NAME`): shared PostgreSQL store, external KMS.
    replica: str = ""
    kms: str = ""  # HOST:PORT of `otrace kms serve`
    kms_key: str = ""  # the KMS's public key (hex) to pin
    lease_ms: int = 5000  # leader lease; a lapsed lease starts a new term
    election_ms: int = 5000  # how long a term may stay unclaimed
    advertise: str = ""  # host other replicas reach this one's query API at [--query's host]

    def __post_init__(self) -> None:
        if self.storage not in {"oram", "encrypted"}:
            raise ConfigError(f"storage must be 'oram' or 'encrypted', not {self.storage!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both a certificate (tls_cert) and a key (tls_key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("mTLS (tls_client_ca) needs tls_cert and tls_key as well")
        if self.require_attested_producers and not self.tls_cert:
            raise ConfigError("require_attested_producers needs tls_cert and tls_key (mTLS)")
        if self.require_attested_producers and self.tls_client_ca:
            raise ConfigError(
                "require_attested_producers uses the producer CA as client CA; "
                "do not set tls_client_ca as well"
            )
        self._check_replica()
        for name in (
            "max_request_bytes",
            "lease_ms",
            "election_ms",
            "epoch_ms",
            "oram_blocks",
            "oram_batch",
            "retention",
            "trace_reads",
            "search_reads",
            "build_workers",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        # Queries read in equal batches no wider than the ORAM's batch (searches in >= 2).
        for name, least in (("trace_reads", 1), ("search_reads", 2)):
            reads = getattr(self, name)
            batches = max(least, -(-reads // self.oram_batch))
            if reads % batches:
                raise ConfigError(
                    f"{name} ({reads}) must split into {batches} equal batches of at most "
                    f"oram_batch ({self.oram_batch}) reads: pick a multiple of {batches}"
                )

    def _check_replica(self) -> None:
        if not self.replica:
            return
        if not self.replica.isprintable() or not 0 < len(self.replica) <= 64:
            raise ConfigError("a replica name is 1 to 64 printable characters")
        if not self.store.startswith("postgresql"):
            raise ConfigError(
                "replicas share one PostgreSQL store: pass --store postgresql+psycopg://..."
            )
        if not self.kms:
            raise ConfigError("a replica attests to `otrace kms serve`: pass --kms HOST:PORT")
        try:
            key = bytes.fromhex(self.kms_key)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(
                "a replica pins the KMS key: pass --kms-key with the 64 hex digits "
                "`otrace kms serve` printed"
            )
        if self.storage != "oram":
            raise ConfigError("replicas run with --storage oram only")

    @property
    def unindexed_keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.unindexed_attributes.split(",") if k.strip())

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'otrace.sqlite'}"


def load_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None = None
) -> Settings:
    """Merges the sources; `flags` holds only options the user actually gave."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(_from_toml(config_file))
    for f in fields(Settings):
        value = env.get(f"OTRACE_{f.name.upper()}")
        if value is not None:
            merged[f.name] = value
    merged.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**{name: _coerce(name, value) for name, value in merged.items()})


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = raw.get("otrace", raw)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return dict(table)


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}.get(name)
    if kind is None:
        raise ConfigError(f"unknown setting {name!r}")
    if kind == "bool":
        return _parse_bool(name, value)
    if kind == "Path":
        return Path(os.path.expanduser(str(value)))
    if kind == "int":
        if name == "max_request_bytes":
            return parse_size(value)
        durations = {"epoch_ms", "lease_ms", "election_ms"}
        if name in durations and isinstance(value, str) and not value.isdigit():
            return round(parse_duration(value) * 1000)
        if name == "retention" and isinstance(value, str) and not value.isdigit():
            return round(parse_duration(value))
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name} must be a whole number, not {value!r}") from None
    return str(value)


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"setting {name} must be true or false, not {value!r}")


def parse_duration(text: str) -> float:
    """`250ms`, `2s`, `5m`, `1h`, `7d` -> seconds."""
    raw = str(text).strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if raw.endswith(unit):
            try:
                return float(raw[: -len(unit)]) * _UNITS[unit]
            except ValueError:
                break
    raise ConfigError(f"bad duration {text!r}: use a number and a unit, e.g. 250ms, 2s, 5m, 1h, 7d")


def parse_size(value: object) -> int:
    """`16MiB`, `512KiB`, `1048576` -> bytes."""
    if isinstance(value, int):
        return value
    raw = str(value).strip().lower().replace(" ", "")
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits) :]
    if not digits or unit not in _SIZES:
        raise ConfigError(f"bad size {value!r}: use e.g. 16MiB, 512KiB or a byte count")
    return int(float(digits) * _SIZES[unit])
