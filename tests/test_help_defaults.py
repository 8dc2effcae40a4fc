"""Defaults stated in ``liverec train --help`` and ``liverec serve --help`` are the
settings' real defaults (the options themselves default to None, so that the
environment can fill them: typer cannot show those)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer

from liverec import cli
from serving.settings import ServeSettings
from stream.settings import KafkaSettings
from trainer.settings import TrainerSettings

_STATED = re.compile(r"(?:\(|; )default: ([^;)]+)[;)]")


def _defaults(*classes: type[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in classes:
        for name, field in cls.model_fields.items():
            if name not in out and not field.is_required() and field.default_factory is None:
                out[name] = field.default
    return out


@pytest.mark.parametrize(("command", "classes", "least"), [
    ("train", (TrainerSettings, KafkaSettings), 9),
    ("serve", (ServeSettings, KafkaSettings), 5),
])
def test_stated_defaults_are_the_settings_defaults(command: str, classes: tuple[type, ...],
                                                   least: int) -> None:
    group = typer.main.get_command(cli.app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    defaults = _defaults(*classes)
    checked = 0
    for param in cmd.params:
        m = _STATED.search(getattr(param, "help", None) or "")
        if m is None or param.name not in defaults:
            continue  # e.g. "default: from the header": no settings field of that name
        real = defaults[param.name]
        stated = m.group(1).strip()
        if " " in stated:  # prose ("from the header", "process with confluent, ...")
            continue
        if isinstance(real, bool):
            assert stated.lower() == str(real).lower(), (command, param.name, stated, real)
        elif isinstance(real, int | float):
            assert type(real)(stated) == real, (command, param.name, stated, real)
        else:
            assert stated == str(real), (command, param.name, stated, real)
        checked += 1
    assert checked >= least, (command, checked)


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += _commands(cmd, f"{prefix}{name} ")
        else:
            out.append((prefix + name, cmd))
    return out


def test_every_command_help_is_one_line_per_paragraph() -> None:
    """The terminal wraps a paragraph; a line break kept from the source broke lines
    mid-sentence (`train --help`: "(each with" / "its own --instance-id")."""
    commands = _commands(typer.main.get_command(cli.app))
    assert len(commands) >= 10
    for name, cmd in commands:
        for paragraph in (cmd.help or "").split("\n\n"):
            assert "\n" not in paragraph or paragraph.startswith("\b"), (name, paragraph)


def test_every_help_fits_80_columns_and_hides_nothing() -> None:
    """`--help` in an 80-column terminal: no line wider, no option name, environment
    variable or command summary cut off with an ellipsis (the boxed layout cut
    `[LIVEREC_KAFKA_BOOTSTRAP / ...` to `[LIVEREC_KAFKA_BOOT…`)."""
    from typer.testing import CliRunner

    groups = [[], *([name] for name, cmd in
                    typer.main.get_command(cli.app).commands.items()  # type: ignore[attr-defined]
                    if hasattr(cmd, "commands"))]
    argvs = groups + [name.split() for name, _ in _commands(typer.main.get_command(cli.app))]
    assert len(argvs) >= 15
    for argv in argvs:
        out = CliRunner().invoke(cli.app, [*argv, "--help"], terminal_width=80)
        assert out.exit_code == 0, (argv, out.output)
        assert "Usage: liverec" in out.output, argv
        for line in out.output.splitlines():
            assert len(line) <= 80, (argv, line)
            cut = "…" in line or (line.rstrip().endswith("...") and "[ARGS]..." not in line)
            assert not cut, (argv, line)
    top = CliRunner().invoke(cli.app, ["--help"], terminal_width=80).output
    assert "generate  Write a synthetic" in top and "CSV)." in top  # wrapped, not cut
