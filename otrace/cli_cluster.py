"""`otrace cluster status`: the replicas, the term, the lease and the journal of a shared store."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from otrace.errors import ConfigError

__all__ = ["cluster"]


@click.group()
def cluster() -> None:
    """Inspect a cluster of replicas (`otrace serve --replica NAME`)."""


@cluster.command("status")
@click.option(
    "--store",
    help="The cluster's shared store URL, e.g. postgresql+psycopg://u@h/db. Env: OTRACE_STORE.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(store: str | None, as_json: bool) -> None:
    """Show replicas, term, leader, lease expiry and journal depth.

    \b
    Reads the store only (no secrets needed, nothing is written):
      term            the current term; the election's phase within it
      leader          who leads it, shown only once the leader has claimed the
                      term with a verified proof (before that nobody, not even
                      the store, knows who will)
      lease           when the leader's lease expires unless it heartbeats
      journal depth   journaled requests the leader has not yet drained
      ORAM            commits so far (the first leader creates the tree)
      replicas        every replica that joined: query API, OTLP endpoint,
                      seconds since it was last seen, whether it registered
                      an election key
      terms           the last terms' ORAM commits (first..last commit number):
                      they never interleave, or a stale leader wrote
    """
    from collector import cluster_status

    url = store or os.environ.get("OTRACE_STORE")
    if not url:
        raise ConfigError("no store: pass --store URL (or set OTRACE_STORE)")
    state = cluster_status(url)
    now = time.time()
    if as_json:
        click.echo(json.dumps(state.to_json(now), indent=2))
        return
    console = Console()
    summary = Table(title="otrace cluster", show_header=False)
    summary.add_row("term", f"{state.term} ({state.to_json(now)['phase']})")
    summary.add_row("leader", state.leader or "(not claimed yet)")
    left = state.lease_left(now)
    expiry = datetime.fromtimestamp(state.lease_expires_at, UTC).strftime("%H:%M:%S.%f")[:-3]
    summary.add_row("lease", f"expires {expiry} UTC ({left:+.1f} s)" if state.term else "-")
    summary.add_row("journal depth", f"{state.journal_depth:,} requests")
    oram = "not created yet" if state.oram_seq is None else f"{state.oram_seq:,} commits"
    summary.add_row("ORAM", oram)
    console.print(summary)
    replicas = Table(title="replicas")
    for header in ("name", "query API", "OTLP", "seen", "registered"):
        replicas.add_column(header)
    for m in state.replicas:
        replicas.add_row(
            m.name + (" *" if m.name == state.leader else ""),
            m.query_endpoint,
            m.otlp_endpoint,
            f"{now - m.seen_at:.1f} s ago",
            "yes" if m.registered else "no",
        )
    console.print(replicas)
    if state.terms:
        terms = Table(title="ORAM commits by term (newest first)")
        for header in ("term", "leader", "commits", "first..last"):
            terms.add_column(header)
        for t in state.terms:
            terms.add_row(str(t.term), t.leader, f"{t.commits:,}", f"{t.first_seq}..{t.last_seq}")
        console.print(terms)
