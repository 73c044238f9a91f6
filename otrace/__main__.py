"""`python -m otrace` runs the CLI."""

from otrace.cli import main

main()
