"""The ``influence`` command: above ``service`` and ``clients`` (it may use both; nothing imports it)."""

from cli import explain  # noqa: F401  (registers the saliency and attack commands)
from cli.commands import app, main

__all__ = ["app", "main"]
