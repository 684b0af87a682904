"""Subcommands of the vitgraph CLI, one module each (see vitgraph/cli.py)."""
