"""The ``influence`` command: above ``service`` and ``clients`` (it may use both; nothing imports it)."""

from cli import applications, evaluate, explain, indexes  # noqa: F401  (register the subcommands)
from cli.commands import app, main

__all__ = ["app", "main"]
