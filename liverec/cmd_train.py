"""`liverec` subcommands for this area (registered by :mod:`liverec.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
