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
