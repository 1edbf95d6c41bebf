"""One help style for every command: an example in each, no Python type names beside options."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
import typer
from typer.testing import CliRunner

from controller.cli import app

runner = CliRunner()
TYPE_NOISE = re.compile(r"<(str|int|float|bool|path|int range|float range|[a-z_]+\|[a-z_|]+)>")
WORKER_COMMANDS = ("train", "data", "checkpoint", "export")


def _commands(command: click.Command, path: list[str]) -> Iterator[list[str]]:
    children = getattr(command, "commands", None)
    if children is None:
        yield path
        return
    for name, child in children.items():
        yield from _commands(child, [*path, name])


COMMANDS = [p for p in _commands(typer.main.get_command(app), []) if p[0] not in WORKER_COMMANDS]


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"serve", "submit", "extend", "logs", "token create", "user set"} <= names


@pytest.mark.parametrize("path", [*COMMANDS, *[[c] for c in WORKER_COMMANDS]], ids=" ".join)
def test_help_has_an_example_and_no_type_noise(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert re.search(r"(?i)examples?:", result.output), (
        f"`pyrecover {' '.join(path)} --help` shows no example"
    )
    assert not TYPE_NOISE.findall(result.output), TYPE_NOISE.findall(result.output)
    assert "(default: None)" not in result.output
