"""The ``liverec`` command. Each area registers its own subcommands.

Heavy imports (torch, kafka) happen inside the commands, so ``liverec --help``
stays fast.
"""

from __future__ import annotations

import inspect
import os
import platform
from typing import Annotated

import typer

from liverec import (
    cmd_catalog,
    cmd_features,
    cmd_keys,
    cmd_models,
    cmd_serve,
    cmd_stream,
    cmd_system,
    cmd_train,
)
from liverec.runtime import configure_malloc, configure_umask

app = typer.Typer(
    rich_markup_mode=None,
    name="liverec",
    help="Streaming incremental-learning recommender: Kafka in, online models, "
    "hot-reloaded serving, Prometheus out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from stream.buildinfo import liverec_version

        typer.echo(f"liverec {liverec_version()} (Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _startup(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print liverec's version (and Python's) and exit.")] = False,
) -> None:
    """Process-wide settings before any command runs (see ``liverec.runtime``)."""
    configure_malloc(ctx.invoked_subcommand)
    try:
        configure_umask(os.environ.get("LIVEREC_UMASK"))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


for module in (cmd_stream, cmd_models, cmd_catalog, cmd_train, cmd_serve, cmd_keys,
               cmd_system, cmd_features):
    module.register(app)


def reflow(doc: str | None) -> str | None:
    r"""A docstring's paragraphs each on one line: ``--help`` wraps them to the
    terminal (typer keeps the source's line breaks inside a paragraph, which broke
    lines mid-sentence at any width). A paragraph whose first line is ``\b`` keeps
    its lines.

    >>> reflow("Summary.\n\n    One paragraph\n    over two lines.\n")
    'Summary.\n\nOne paragraph over two lines.'
    """
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n"))
                       for p in paragraphs)


def summary(text: str | None) -> str | None:
    r"""The first sentence of a help text: a command's line in its group's list (which
    click would cut to the terminal's width, mid-phrase, with "...").

    >>> summary("Replay a CSV into Kafka. Rows go in event-time order.\n\nMore.")
    'Replay a CSV into Kafka.'
    >>> summary("Serve recommendations (FastAPI + uvicorn).")
    'Serve recommendations (FastAPI + uvicorn).'
    """
    if not text:
        return None
    first = text.split("\n\n", 1)[0].removeprefix("\b").strip()
    end = first.find(". ")
    return " ".join((first if end < 0 else first[:end + 1]).split())


def _reflow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = reflow(info.callback.__doc__)
        if info.short_help is None:
            info.short_help = summary(info.help)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            sub = group.typer_instance.info
            if not isinstance(sub.short_help, str) and isinstance(sub.help, str):
                sub.short_help = summary(sub.help)
            _reflow_help(group.typer_instance)


_reflow_help(app)


if __name__ == "__main__":  # pragma: no cover
    app()
