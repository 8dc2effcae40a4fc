"""The ``liverec`` command. Each area registers its own subcommands.

Heavy imports (torch, kafka) happen inside the commands, so ``liverec --help``
stays fast.
"""

from __future__ import annotations

import os

import typer

from liverec import (
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
    name="liverec",
    help="Streaming incremental-learning recommender: Kafka in, online models, "
    "hot-reloaded serving, Prometheus out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _startup(ctx: typer.Context) -> None:
    """Process-wide settings before any command runs (see ``liverec.runtime``)."""
    configure_malloc(ctx.invoked_subcommand)
    try:
        configure_umask(os.environ.get("LIVEREC_UMASK"))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


for module in (cmd_stream, cmd_models, cmd_train, cmd_serve, cmd_keys, cmd_system,
               cmd_features):
    module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
