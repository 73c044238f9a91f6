"""`otrace attest` and `otrace kms ...`: the enclave, attestation and KMS commands.

Settings are resolved here only: flags, then `OTRACE_*` environment variables
(click's `envvar`), then defaults. Library errors surface as `OTraceError` and
are rendered by `otrace.cli.main`.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import ConfigError, InvalidRequest
from tee import (
    SECURITY_VERSION,
    EnclaveIdentity,
    Kms,
    KmsClient,
    KmsPolicy,
    Platform,
    Verifier,
    load_or_create_owner_key,
    measure_code,
    open_channel,
    serve_kms,
    sign_policy,
)
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_map

__all__ = ["attest", "kms"]

_OTRACE_HOME = Path("~/.otrace")
_EVIDENCE_KEYS = frozenset({"quote", "public_key"})

platform_dir_option = click.option(
    "--platform-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OTRACE_PLATFORM_DIR",
    default=_OTRACE_HOME / "platform",
    show_default=True,
    help="Emulated platform directory (root secret, attestation key, counters). "
    "Env: OTRACE_PLATFORM_DIR.",
)
kms_endpoint_option = click.option(
    "--kms",
    "kms_target",
    envvar="OTRACE_KMS",
    metavar="HOST:PORT",
    help="Address of a running `otrace kms serve`. Env: OTRACE_KMS.",
)


def _open_platform(platform_dir: Path) -> Platform:
    return Platform.open(platform_dir.expanduser())


def _this_build(platform: Platform) -> EnclaveIdentity:
    return platform.identity(measure_code(), SECURITY_VERSION)


def _hex(value: str, what: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise InvalidRequest(f"{what} must be {size} bytes of hex")
    return raw


@click.command()
@platform_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--quote-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write evidence (quote + channel key) for --nonce to this file.",
)
@click.option(
    "--verify-quote",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify an evidence file written by --quote-out against --nonce.",
)
@click.option("--nonce", help="The 32-byte hex nonce the quote must be bound to.")
@click.option(
    "--measurement",
    "measurements",
    multiple=True,
    help="Allowed measurement (hex) for --verify-quote; default: this build's.",
)
@click.option(
    "--platform-key",
    "platform_keys",
    multiple=True,
    help="Trusted platform attestation key (hex) for --verify-quote; default: this platform's.",
)
@click.option(
    "--allow-simulated", is_flag=True, help="Accept simulated quotes (all quotes here are)."
)
@kms_endpoint_option
@click.option(
    "--kms-key",
    envvar="OTRACE_KMS_KEY",
    help="The KMS's public key (hex, printed by `otrace kms serve`) to pin. Env: OTRACE_KMS_KEY.",
)
def attest(
    platform_dir: Path,
    as_json: bool,
    quote_out: Path | None,
    verify_quote: Path | None,
    nonce: str | None,
    measurements: tuple[str, ...],
    platform_keys: tuple[str, ...],
    allow_simulated: bool,
    kms_target: str | None,
    kms_key: str | None,
) -> None:
    """Print this build's measurement, signer and security version; produce or verify quotes.

    With --kms, attest this build to a running KMS and print whether it is accepted.
    """
    platform = _open_platform(platform_dir)
    identity = _this_build(platform)
    if quote_out is not None or verify_quote is not None:
        if nonce is None:
            raise click.UsageError("--quote-out and --verify-quote need --nonce")
        challenge = _hex(nonce, "--nonce", 32)
    if quote_out is not None:
        hello = open_channel(platform, identity, challenge)
        evidence = {"quote": hello.quote, "public_key": hello.public_key}
        quote_out.write_bytes(encode_canonical(evidence))
        click.echo(f"evidence for nonce {challenge.hex()} written to {quote_out}")
    if verify_quote is not None:
        verifier = Verifier(
            trusted_platform_keys=[_hex(k, "--platform-key", 32) for k in platform_keys]
            or [platform.attestation_public_key],
            allowed_measurements=[_hex(m, "--measurement", 32) for m in measurements]
            or [identity.measurement],
            allow_simulated=allow_simulated,
        )
        _print_verdict(verifier, verify_quote.read_bytes(), challenge, as_json)
    elif kms_target is not None:
        _attest_to_kms(platform, identity, kms_target, kms_key)
    elif quote_out is None:
        _print_identity(identity, platform, as_json)


def _attest_to_kms(
    platform: Platform, identity: EnclaveIdentity, target: str, kms_key: str | None
) -> None:
    if kms_key is None:
        raise click.UsageError("--kms needs --kms-key (the key `otrace kms serve` printed)")
    with KmsClient.connect(target, kms_key=_hex(kms_key, "--kms-key", 32)) as client:
        client.obtain_secrets(platform, identity, ())
    click.echo(f"KMS at {target} accepted this enclave ({identity.measurement.hex()})")


def _print_identity(identity: EnclaveIdentity, platform: Platform, as_json: bool) -> None:
    rows = {
        "measurement": identity.measurement.hex(),
        "signer": identity.signer.hex(),
        "security_version": identity.security_version,
        "simulated": identity.simulated,
        "platform_key": platform.attestation_public_key.hex(),
    }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for key, value in rows.items():
        click.echo(f"{key:<17} {value}")


def _print_verdict(verifier: Verifier, evidence_bytes: bytes, nonce: bytes, as_json: bool) -> None:
    try:
        evidence = expect_map(decode_canonical(evidence_bytes), _EVIDENCE_KEYS)
        quote = expect_bytes(evidence["quote"], "quote")
        public_key = expect_bytes(evidence["public_key"], "public_key", 32)
    except ValueError as exc:
        raise InvalidRequest(f"evidence file is malformed: {exc}") from None
    verifier.challenge_with(nonce)
    verified = verifier.verify(quote, public_key=public_key, nonce=nonce)
    if as_json:
        click.echo(
            json.dumps({"verdict": "ok", "measurement": verified.identity.measurement.hex()})
        )
    else:
        click.echo(
            f"quote OK: measurement {verified.identity.measurement.hex()}, "
            f"security version {verified.identity.security_version}, "
            f"simulated {verified.identity.simulated}"
        )


@click.group()
def kms() -> None:
    """Key management service: serve it, and show or change its policy."""


@kms.command("serve")
@click.option(
    "--listen",
    envvar="OTRACE_KMS_LISTEN",
    default="127.0.0.1:7750",
    show_default=True,
    help="Address to serve gRPC on (port 0 picks a free port). Env: OTRACE_KMS_LISTEN.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OTRACE_KMS_STATE_DIR",
    default=_OTRACE_HOME / "kms",
    show_default=True,
    help="Private directory for the KMS's sealed state. Env: OTRACE_KMS_STATE_DIR.",
)
@platform_dir_option
def kms_serve(listen: str, state_dir: Path, platform_dir: Path) -> None:
    """Run the KMS as its own process, serving gRPC until interrupted."""
    platform = _open_platform(platform_dir)
    service = Kms(state_dir.expanduser(), platform, _this_build(platform))
    server = serve_kms(service, listen)
    host = listen.rpartition(":")[0]
    click.echo(f"KMS listening on {host}:{server.port} key {service.public_key.hex()}")
    sys.stdout.flush()

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


@kms.group("policy")
def kms_policy() -> None:
    """Show or replace the KMS policy (updates are signed and name their predecessor)."""


@kms_policy.command("show")
@kms_endpoint_option
def kms_policy_show(kms_target: str | None) -> None:
    """Print the current policy as JSON, with its hash (the next update's predecessor)."""
    with KmsClient.connect(_required(kms_target)) as client:
        current = client.policy()
    if current is None:
        click.echo("the KMS has no policy yet")
        return
    policy = current.parsed()
    click.echo(json.dumps({"hash": policy.digest.hex(), "policy": policy.to_json()}, indent=2))


@kms_policy.command("set")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--owner-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="OTRACE_KMS_OWNER_KEY",
    default=_OTRACE_HOME / "kms-owner.key",
    show_default=True,
    help="Ed25519 owner key file that signs the update (created on first use). "
    "Env: OTRACE_KMS_OWNER_KEY.",
)
@kms_endpoint_option
def kms_policy_set(policy_file: Path, owner_key: Path, kms_target: str | None) -> None:
    """Install POLICY_FILE (JSON as printed by `policy show`, field `policy`).

    Without an "owners" field the signing key becomes the only owner. An update
    must set "predecessor" to the hash `policy show` printed.
    """
    key = load_or_create_owner_key(owner_key.expanduser())
    data = _load_json(policy_file)
    if isinstance(data, dict) and "owners" not in data:
        data["owners"] = [_owner_hex(key)]
    policy = KmsPolicy.from_json(data)
    with KmsClient.connect(_required(kms_target)) as client:
        digest = client.set_policy(sign_policy(policy, key))
    click.echo(f"policy installed: {digest.hex()}")


def _owner_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _required(kms_target: str | None) -> str:
    if not kms_target:
        raise ConfigError("no KMS address: pass --kms HOST:PORT or set OTRACE_KMS")
    return kms_target


def _load_json(path: Path) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read policy JSON {path}: {exc}") from None
    return data.get("policy", data) if isinstance(data, dict) else data
