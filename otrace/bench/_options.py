"""What every `otrace bench` command shares: `--json PATH`, `--dir DIR`, writing the JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

__all__ = ["dir_option", "json_option", "write_json"]

F = TypeVar("F", bound=Callable[..., Any])

json_option: Callable[[F], F] = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures as JSON to this file.",
)
dir_option: Callable[[F], F] = click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Where the temporary nodes live (deleted afterwards).",
)


def write_json(console: Console, path: Path | None, figures: Any) -> None:
    """Writes `figures` to `path` (if given) and says so."""
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"JSON written to {path}")
