"""The CLI teaches: every command and group has help text, and errors render cleanly."""

from __future__ import annotations

import click
from click.testing import CliRunner

from otrace.cli import cli


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += _walk(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_help_text() -> None:
    runner = CliRunner()
    for path in _walk(cli):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        command = cli
        for part in path:
            assert isinstance(command, click.Group)
            command = command.commands[part]
        assert command.help, f"`otrace {' '.join(path)}` has no help text"


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "otrace" in result.output
