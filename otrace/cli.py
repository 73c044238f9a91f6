"""The `otrace` command line: a thin click layer over the library.

Each command loads settings at this edge, calls one library function and lets
`OTraceError` surface; `main` turns those into readable messages in one place.
"""

from __future__ import annotations

import sys

import click

from otrace import __version__
from otrace.bench._cli import bench
from otrace.cli_cluster import cluster
from otrace.cli_faas import faas
from otrace.cli_query import operations, search, services, trace
from otrace.cli_serve import serve
from otrace.cli_tee import attest, kms
from otrace.errors import OTraceError
from otrace.loadtest._cli import loadtest
from otrace.soak._cli import soak


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="otrace")
def cli() -> None:
    """otrace: oblivious, OpenTelemetry-compatible tracing.

    Spans are encrypted inside an (emulated) enclave and stored through a Path
    ORAM, so the storage sees fixed-size ciphertext and random paths only.
    Run `otrace COMMAND --help` for each command.
    """


cli.add_command(serve)
cli.add_command(search)
cli.add_command(trace)
cli.add_command(services)
cli.add_command(operations)
cli.add_command(attest)
cli.add_command(kms)
cli.add_command(bench)
cli.add_command(faas)
cli.add_command(loadtest)
cli.add_command(cluster)
cli.add_command(soak)


def main() -> None:
    """Console-script entry point: runs the CLI and renders otrace errors."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OTraceError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
