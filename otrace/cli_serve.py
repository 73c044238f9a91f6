"""`otrace serve`: run a node until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from otrace.settings import load_settings

__all__ = ["serve"]


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory. [./otrace-data]")
@click.option(
    "--store",
    help="Store URL (SQLAlchemy), e.g. postgresql+psycopg://u@h/db. "
    "[SQLite inside the data directory]",
)
@click.option("--otlp-grpc", help="OTLP/gRPC listen address. [127.0.0.1:4317]")
@click.option("--otlp-http", help="OTLP/HTTP listen address. [127.0.0.1:4318]")
@click.option("--query", help="Query API listen address (otrace search/trace). [127.0.0.1:16685]")
@click.option("--metrics", help="Prometheus /metrics address; '' disables. [127.0.0.1:8888]")
@click.option(
    "--storage",
    type=click.Choice(["oram", "encrypted"]),
    help="oram: Path ORAM (hides access patterns); encrypted: AES-GCM blocks "
    "addressed directly (the baseline; leaks which blocks are touched). [oram]",
)
@click.option(
    "--platform-dir",
    type=click.Path(path_type=Path),
    help="Emulated platform directory (keys, counters, embedded KMS). [~/.otrace/platform]",
)
@click.option("--oram-blocks", type=int, help="ORAM capacity in blocks, fixed at creation. [65536]")
@click.option(
    "--block-size",
    type=int,
    help="Block size in bytes, fixed at creation. [4048 for a new store; an existing "
    "store keeps its own]",
)
@click.option("--epoch", "epoch_ms", help="Epoch period, e.g. 200ms. [200ms]")
@click.option("--retention", help="How long spans stay searchable, e.g. 7d, 12h. [7d]")
@click.option(
    "--search-reads",
    type=int,
    help="ORAM reads every search spends, whatever it matches (more finds more). [64]",
)
@click.option("--trace-reads", type=int, help="ORAM reads every trace lookup spends. [16]")
@click.option(
    "--unindexed-attributes",
    help="Comma-separated attribute keys to store but not index, e.g. request.id,session.id: "
    "unique ids are costly to index and rarely searched (Jaeger's tag deny-list). [none]",
)
@click.option(
    "--max-request-size",
    "max_request_bytes",
    help="Largest Export after decompression, e.g. 16MiB. [16MiB]",
)
@click.option("--tls-cert", help="PEM certificate: serve OTLP/gRPC and OTLP/HTTP over TLS.")
@click.option("--tls-key", help="PEM private key for --tls-cert.")
@click.option("--tls-client-ca", help="PEM CA: require client certificates (mTLS).")
@click.option(
    "--require-attested-producers",
    is_flag=True,
    default=None,
    help="Accept spans only from attested producers: require mTLS client certificates "
    "issued by this platform's producer CA (needs --tls-cert/--tls-key). [off]",
)
@click.option(
    "--replica",
    metavar="NAME",
    help="Run as replica NAME of a cluster: share --store (PostgreSQL) with the other "
    "replicas, get the keys from --kms; any replica ingests and answers queries, the "
    "elected leader alone writes the ORAM. [single node]",
)
@click.option(
    "--kms",
    metavar="HOST:PORT",
    help="A replica's KMS (`otrace kms serve`), whose policy releases oram_key, state_key "
    "and index_key to this build. Env: OTRACE_KMS.",
)
@click.option("--kms-key", metavar="HEX", help="The KMS public key to pin (printed by it).")
@click.option(
    "--lease",
    "lease_ms",
    help="Leader lease, e.g. 5s: a leader that misses heartbeats this long is replaced "
    "(every replica of a cluster needs the same value). [5s]",
)
@click.option(
    "--election-timeout",
    "election_ms",
    help="How long a term may stay unclaimed before the next one opens. [5s]",
)
@click.option(
    "--advertise",
    metavar="HOST",
    help="Host the other replicas reach this replica's query API at. [--query's host]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="TOML file with the same settings (an [otrace] table or top level).",
)
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run an otrace node: OTLP receivers, the enclave, the ORAM store.

    Point any OpenTelemetry exporter at it (OTEL_EXPORTER_OTLP_ENDPOINT=
    http://127.0.0.1:4317). Every setting can also come from an OTRACE_*
    environment variable (OTRACE_DATA_DIR, OTRACE_STORE, OTRACE_AUTH_TOKEN
    for a bearer token, ...) or a TOML --config file; flags win.

    \b
    A cluster of replicas (each with its own --data-dir, one shared store):
      otrace serve --replica a --store postgresql+psycopg://u@db/otrace \\
          --kms 10.0.0.5:7750 --kms-key HEX --otlp-grpc 0.0.0.0:4317
    See `otrace cluster status` and README "Running a cluster".
    """
    from collector import Node

    settings = load_settings(flags, os.environ, config_file)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console = Console(stderr=True)
    node = Node(settings)
    with console.status(
        "starting: attesting to the KMS, opening the ORAM (first start writes the tree)"
    ):
        node.start()
    table = Table(title="otrace node", show_header=False)
    assert node.grpc is not None and node.http is not None
    table.add_row("OTLP/gRPC", node.grpc.address)
    scheme = "https" if settings.tls_cert else "http"
    table.add_row("OTLP/HTTP", f"{scheme}://127.0.0.1:{node.http.port}/v1/traces")
    metrics = f"http://127.0.0.1:{node.metrics.port}/metrics" if node.metrics else "off"
    table.add_row("metrics", metrics)
    assert node.query is not None
    table.add_row("query API", f"127.0.0.1:{node.query.port}  (otrace search / otrace trace)")
    table.add_row("analyst key", str(node.credential_path))
    table.add_row("storage", f"{settings.storage} at {_without_password(settings.store_url)}")
    if settings.replica:
        table.add_row("replica", f"{settings.replica} (KMS {settings.kms}; leader elected)")
    console.print(table)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("stopping: finishing queued Exports")
    node.stop()


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "(store URL)"
