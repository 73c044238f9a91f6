"""`otrace faas gateway|controller|worker|invoke`: the chain roles as separate processes.

Each role serves raw bytes over gRPC (`otrace.faas.v1.Faas/Call`) on `--listen`
(port 0 picks a free one) and prints `<role> listening on HOST:PORT` once up.
Workers and the gateway are deployed with the owner-signed manifests they serve
(`--manifest`, verified against `--owner` at start; hops name them by hash)
and attest to the KMS (`--kms`, pinned `--kms-key`) on the first request;
`--otlp` exports their spans, through an attested producer certificate when
`--producer-ca` names the CA service.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from otrace.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from otrace.faas import ChainFunction
    from tee import KmsClient, Platform

# The FaaS runtime (OpenTelemetry SDK, gRPC) is imported inside each command, so
# other `otrace` commands do not pay for it at start-up.

__all__ = ["faas"]

_platform_option = click.option(
    "--platform-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OTRACE_PLATFORM_DIR",
    default=Path("~/.otrace/platform"),
    show_default=True,
    help="Emulated platform directory. Env: OTRACE_PLATFORM_DIR.",
)
_listen_option = click.option(
    "--listen", default="127.0.0.1:0", show_default=True, help="gRPC listen address."
)
_kms_options = [
    click.option("--kms", "kms_target", required=True, metavar="HOST:PORT", help="KMS address."),
    click.option("--kms-key", required=True, help="The KMS's public key (hex) to pin."),
    click.option(
        "--owner", "owners", multiple=True, required=True, help="Chain owner public key (hex)."
    ),
    click.option("--otlp", default="", help="OTLP/gRPC endpoint for spans (host:port). [off]"),
    click.option("--producer-ca", default="", help="Producer CA service address (mTLS export)."),
    click.option(
        "--server-ca",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="PEM CA of the collector's TLS certificate (with --producer-ca).",
    ),
    _platform_option,
]


def _with_kms_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_kms_options):
        command = option(command)
    return command


@click.group()
def faas() -> None:
    """Protected FaaS chains: run the gateway, the controller and worker functions."""


def _manifest_option(*, multiple: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--manifest",
        "manifests" if multiple else "manifest",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        multiple=multiple,
        required=True,
        help="An owner-signed manifest (as written by SignedManifest.to_bytes) this role serves"
        + ("; repeat for several chains." if multiple else "."),
    )


@faas.command("worker")
@click.option("--function", "spec", required=True, help="module:attribute of a @chain_function.")
@_manifest_option(multiple=True)
@_listen_option
@_with_kms_options
def worker(spec: str, manifests: tuple[Path, ...], listen: str, **options: Any) -> None:
    """Serve one chain function in an emulated enclave, deployed with its chains' manifests."""
    from otrace.faas import FunctionHost, SignedManifest

    function = _load_function(spec)
    platform, kms, owners = _enclave_parts(options)
    signed = [SignedManifest.from_bytes(path.read_bytes()) for path in manifests]
    tracer = _tracer(function.name, function.measurement, platform, options)
    host = FunctionHost(
        function, platform, kms, owners=owners, manifests=signed, tracer_provider=tracer
    )
    _serve(f"worker {function.name}", {"Call": host.handle}, listen, tracer)


@faas.command("controller")
@click.option("--route", "routes", multiple=True, required=True, help="NAME=HOST:PORT.")
@_listen_option
def controller(routes: tuple[str, ...], listen: str) -> None:
    """Serve the untrusted controller: route messages by their plaintext metadata."""
    from otrace.faas import Controller, GrpcTransport

    table: dict[str, GrpcTransport] = {}
    for route in routes:
        name, sep, target = route.partition("=")
        if not sep or not target:
            raise InvalidRequest(f"--route {route!r}: use NAME=HOST:PORT")
        table[name] = GrpcTransport(target)
    _serve("controller", {"Call": Controller(table).route}, listen, None)


@faas.command("gateway")
@_manifest_option(multiple=False)
@click.option("--controller", "controller_target", required=True, metavar="HOST:PORT")
@_listen_option
@_with_kms_options
def gateway(manifest: Path, controller_target: str, listen: str, **options: Any) -> None:
    """Serve the trusted gateway: `Call` takes CBOR arguments and returns the CBOR result."""
    from otrace.faas import Gateway, GrpcTransport, SignedManifest, gateway_measurement
    from tee._encoding import decode_canonical, encode_canonical

    platform, kms, owners = _enclave_parts(options)
    tracer = _tracer("gateway", gateway_measurement(), platform, options)
    signed = SignedManifest.from_bytes(manifest.read_bytes())
    entry = Gateway(
        signed,
        platform,
        kms,
        GrpcTransport(controller_target),
        owners=owners,
        tracer_provider=tracer,
    )

    def call(request: bytes) -> bytes:
        try:
            args = decode_canonical(request)
        except ValueError:
            raise InvalidRequest("gateway request is not canonical CBOR") from None
        return encode_canonical(entry.invoke(args))

    _serve("gateway", {"Call": call}, listen, tracer)


@faas.command("invoke")
@click.option("--gateway", "target", required=True, metavar="HOST:PORT")
@click.argument("args_json")
def invoke(target: str, args_json: str) -> None:
    """Call a chain through its gateway with JSON arguments; print the JSON result."""
    from otrace.faas import GrpcTransport
    from tee._encoding import decode_canonical, encode_canonical

    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"arguments are not JSON: {exc}") from None
    transport = GrpcTransport(target)
    try:
        result = decode_canonical(transport.call(encode_canonical(args)))
    finally:
        transport.close()
    click.echo(json.dumps(result, default=lambda b: b.hex()))


def _load_function(spec: str) -> ChainFunction:
    from otrace.faas import ChainFunction

    module_name, _, attribute = spec.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load function {spec!r}: {exc}") from None
    if not isinstance(value, ChainFunction):
        raise ConfigError(f"{spec!r} is not a @chain_function")
    return value


def _enclave_parts(options: Mapping[str, Any]) -> tuple[Platform, KmsClient, list[bytes]]:
    from tee import KmsClient, Platform

    platform = Platform.open(Path(options["platform_dir"]).expanduser())
    kms = KmsClient.connect(options["kms_target"], kms_key=_hex(options["kms_key"], "--kms-key"))
    return platform, kms, [_hex(owner, "--owner") for owner in options["owners"]]


def _tracer(
    name: str, measurement: bytes, platform: Platform, options: Mapping[str, Any]
) -> TracerProvider | None:
    from otrace.faas import (
        GrpcTransport,
        RemoteProducerCa,
        attested_tracer_provider,
        otlp_tracer_provider,
    )
    from tee import SECURITY_VERSION

    endpoint = options["otlp"]
    if not endpoint:
        return None
    if not options["producer_ca"]:
        return otlp_tracer_provider(name, endpoint)
    if options["server_ca"] is None:
        raise ConfigError("--producer-ca needs --server-ca (the collector's TLS CA)")
    return attested_tracer_provider(
        name,
        endpoint,
        ca=RemoteProducerCa(GrpcTransport(options["producer_ca"])),
        server_ca_pem=Path(options["server_ca"]).read_bytes(),
        platform=platform,
        identity=platform.identity(measurement, SECURITY_VERSION),
    )


def _serve(
    role: str,
    methods: Mapping[str, Callable[[bytes], bytes]],
    listen: str,
    tracer: TracerProvider | None,
) -> None:
    from otrace.faas import serve_bytes

    server = serve_bytes(methods, listen)
    click.echo(f"{role} listening on {listen.rpartition(':')[0]}:{server.port}")
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    if tracer is not None:
        tracer.shutdown()


def _hex(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidRequest(f"{what} must be 32 bytes of hex")
    return raw
