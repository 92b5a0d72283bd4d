"""The ``influence`` command: above ``service`` and ``clients`` (it may use both; nothing imports it)."""

from cli import explain, indexes  # noqa: F401  (register the saliency, attack and index commands)
from cli.commands import app, main

__all__ = ["app", "main"]
