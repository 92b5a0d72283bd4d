"""The README against the code: every ``influence ...`` line it shows runs against the real CLI's commands
and options, and every ``INFLUENCE_*`` variable it names exists (and every setting is documented)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

OTHER_VARIABLES = {
    "INFLUENCE_ARTIFACTS": "cli/common.py",
    "INFLUENCE_PORT": "docker-compose.yml",
    "INFLUENCE_UI_SCREENSHOTS": "tests/test_page.py",
    "INFLUENCE_CHROMIUM": "tests/test_page.py",
}
"""``INFLUENCE_*`` names that are not service settings, and the file that reads each."""


def _command_lines() -> list[str]:
    """Each ``influence ...`` command in the README's shell blocks, without comments or continuations."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" # ")[0].strip()
            words = shlex.split(command, comments=True) if command else []
            while words and ("=" in words[0] and not words[0].startswith("-")):  # VAR=value prefixes
                words = words[1:]
            if words and words[0].endswith("influence"):
                lines.append(shlex.join(words))
    return lines


COMMAND_LINES = _command_lines()


def _resolve(words: list[str]) -> tuple[object, list[str]]:
    """The (sub)command the leading words name, and the words after them."""
    command = typer.main.get_command(app)
    rest = list(words)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # a group (typer's click)
        name = rest.pop(0)
        assert name in command.commands, (
            f"`influence ... {name}`: no such command ({sorted(command.commands)})"
        )
        command = command.commands[name]
    return command, rest


def test_the_readme_shows_commands():
    assert len(COMMAND_LINES) > 20 and any(line.startswith("influence card") for line in COMMAND_LINES)


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_every_readme_command_and_option_exists(line):
    command, rest = _resolve(shlex.split(line)[1:])
    options = {"--help"} | {
        name for parameter in command.params for name in (*parameter.opts, *parameter.secondary_opts)
    }
    given = {word.split("=")[0] for word in rest if word.startswith("--")}
    assert given <= options, f"{line}: {sorted(given - options)} not options of `{command.name}`"


def _settings_variables() -> set[str]:
    return {f"INFLUENCE_{name.upper()}" for name in Settings.model_fields}


def test_every_variable_the_readme_names_exists_and_every_setting_is_documented():
    named = {name for name in re.findall(r"INFLUENCE_[A-Z0-9_]+", README) if not name.endswith("_")}
    unknown = named - _settings_variables() - set(OTHER_VARIABLES)
    assert not unknown, f"the README names variables nothing reads: {sorted(unknown)}"
    undocumented = _settings_variables() - named
    assert not undocumented, f"settings the README does not document: {sorted(undocumented)}"
    for name, where in OTHER_VARIABLES.items():
        assert name in (ROOT / where).read_text(), f"{name} is not read in {where}"
