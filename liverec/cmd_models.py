"""`liverec generate` and `liverec evaluate` (registered by :mod:`liverec.cli`).

Heavy modules (numpy, torch, matplotlib, the models) are imported inside the
commands so that ``liverec --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def generate(
    out: Annotated[Path, typer.Option("--out", help="CSV to write (.gz for gzip).")],
    events: Annotated[int, typer.Option("--events", min=0, help="Number of events.")] = 100_000,
    users: Annotated[int, typer.Option("--users", min=1, help="Number of users.")] = 1_000,
    items: Annotated[int, typer.Option("--items", min=1, help="Catalogue size.")] = 2_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    drift_at: Annotated[
        int | None,
        typer.Option("--drift-at", min=0, help="Event index where tastes and popularity shift."),
    ] = None,
    start_ts: Annotated[
        float, typer.Option("--start-ts", help="Epoch seconds of the first event.")
    ] = 1_704_067_200.0,
) -> None:
    """Write a synthetic click stream with planted structure (the `liverec` CSV)."""
    from tqdm import tqdm

    from online_models.synthetic import iter_events, write_csv

    stream = iter_events(events, users, items, seed, drift_at, start_ts=start_ts)
    n = write_csv(tqdm(stream, total=events, unit="ev", desc="generate", leave=False), out)
    drift = f", drift at event {drift_at}" if drift_at is not None else ""
    typer.echo(f"wrote {n} events ({users} users, {items} items, seed {seed}{drift}) to {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("generate")(generate)
