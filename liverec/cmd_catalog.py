"""`liverec models list|check`: the models this install can build, and whether one keeps
the model protocol (for the author of a plugin model; see :mod:`online_models.registry`).
"""

from __future__ import annotations

from typing import Annotated

import typer

models_app = typer.Typer(
    rich_markup_mode=None,
    help="The models this install can build (built-in and plugins), and a protocol check.",
    no_args_is_help=True,
)


@models_app.command("list")
def models_list() -> None:
    """Every model name with where it comes from; `*` marks the default mix ('all')."""
    from online_models import registry

    plugins = registry.plugins()  # logs a WARNING for each plugin left out, and why
    rows = [(n, "built-in", registry.MODEL_PATHS[n]) for n in registry.MODEL_PATHS]
    broken: list[str] = []
    for p in plugins.values():
        try:
            registry.model_class(p.name)
            rows.append((p.name, p.source, p.path))
        except ValueError as exc:
            rows.append((p.name, p.source, f"{p.path}  (cannot be used: see below)"))
            broken.append(str(exc))
    width = max(len(n) for n, _, _ in rows) + 2
    src = max(len(s) for _, s, _ in rows) + 2
    for name, source, path in rows:
        mark = "*" if name in registry.DEFAULT_MODELS else " "
        typer.echo(f"{mark} {name:<{width}}{source:<{src}}{path}")
    typer.echo("* in the default mix (--models all)")
    for reason in broken:
        typer.echo(f"error: {reason}", err=True)
    if not plugins:
        typer.echo(f"(no plugin models in use: a package adds one under the entry-point "
                   f"group {registry.PLUGIN_GROUP!r}; any left out are named above, on "
                   "stderr)")
    if broken:
        raise typer.Exit(1)


@models_app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="A model name (see `liverec models list`).")],
    params: Annotated[str | None, typer.Option(
        "--params", help='JSON constructor arguments, e.g. \'{"window": 20}\'.')] = None,
    events: Annotated[int, typer.Option(
        "--events", min=300, help="Events in the synthetic check stream.")] = 3_000,
) -> None:
    """Run a model through the protocol the trainer, evaluator, snapshots and server rely
    on (learn, score, recommend, similar, state round trip, determinism, new and forgotten
    ids) on a small synthetic stream. Exit 1 when a check fails."""
    import orjson

    from online_models import registry
    from online_models.conformance import CAPABILITIES, check_model

    try:
        registry.model_class(name)
        given = orjson.loads(params) if params is not None else {}
        if not isinstance(given, dict):
            raise ValueError("--params must be a JSON object")
        registry.check_params({name: given}, [name])
    except (ValueError, orjson.JSONDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = check_model(name, given, events=events)
    width = max(len(c.name) for c in report.checks) + 2
    for c in report.checks:
        typer.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}{c.detail}")
    if report.hr is not None and report.hr_popularity is not None:
        typer.echo(f"HR@{report.k} on the check stream (prequential): {report.hr:.3f} "
                   f"(popularity {report.hr_popularity:.3f})")
    elif report.hr_error is not None:
        typer.echo(f"HR@{report.k} on the check stream: not measured ({report.hr_error})")
    if report.capabilities:
        typer.echo("optional parts of the protocol (a model trains and serves without them):")
    for part, has in report.capabilities.items():
        more = f": {report.lacks[part]}" if part in report.lacks else ""
        typer.echo(f"  {'has  ' if has else 'lacks'} {CAPABILITIES[part]}{more}")
    failed = [c.name for c in report.checks if not c.ok]
    if failed:
        typer.echo(f"{name}: {len(failed)} of {len(report.checks)} checks failed "
                   f"({', '.join(failed)})", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: all {len(report.checks)} checks passed")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(models_app, name="models")
