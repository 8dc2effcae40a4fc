"""`liverec demo`: the whole system in one command (registered by :mod:`liverec.cli`).

The orchestration lives in :mod:`liverec.demo`; this module only maps options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    duration: Annotated[float | None, typer.Option(
        help="seconds to stream, then stop and summarise (default: until Ctrl-C)", min=1)
    ] = None,
    summary_json: Annotated[Path | None, typer.Option(
        help="write the final figures here as JSON")] = None,
    rate: Annotated[float, typer.Option(help="synthetic clicks per second", min=0.1)] = 100.0,
    drift_after_s: Annotated[float | None, typer.Option(
        help="seconds until the planted drift (default: half the duration, or 60)", min=0)
    ] = None,
    users: Annotated[int, typer.Option(help="synthetic users", min=1)] = 500,
    items: Annotated[int, typer.Option(help="synthetic items", min=1)] = 1_000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    models: Annotated[str, typer.Option(help="models the trainer runs (registry names)")
    ] = "popularity,itemknn,sequence",
    default_model: Annotated[str, typer.Option(help="model the API answers with")
    ] = "itemknn",
    api_port: Annotated[int, typer.Option(help="API port (a free one if taken)")] = 8000,
    metrics_port: Annotated[int, typer.Option(
        help="trainer metrics port (a free one if taken)")] = 9101,
    status_every_s: Annotated[float, typer.Option(help="seconds between status lines",
                                                  min=0.5)] = 5.0,
    run_dir: Annotated[Path | None, typer.Option(
        help="snapshots and logs (default ./runs/demo-<timestamp>)")] = None,
) -> None:
    """Start Kafka, the trainer and the server, stream clicks with a drift, print status."""
    from liverec.demo import DemoOptions, run_demo
    from stream.broker import KafkaSetupError

    opts = DemoOptions(
        duration=duration, summary_json=summary_json, rate=rate, drift_after_s=drift_after_s,
        users=users, items=items, seed=seed, models=models, default_model=default_model,
        api_port=api_port, metrics_port=metrics_port, status_every_s=status_every_s,
        run_dir=run_dir,
    )
    try:
        run_demo(opts, echo=typer.echo)
    except KafkaSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("demo")(demo)
