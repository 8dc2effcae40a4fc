"""`liverec broker start|stop|status` and `liverec replay` (registered by :mod:`liverec.cli`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

broker_app = typer.Typer(
    rich_markup_mode=None,
    help="A local single-node Apache Kafka (KRaft) for demos and tests.",
    no_args_is_help=True,
)


@broker_app.command("start")
def broker_start(
    heap: Annotated[str, typer.Option(help="JVM heap (-Xmx)")] = "512m",
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="stop a running local broker, wipe the data directory (topics, "
                        "offsets) and pick new ports")] = False,
) -> None:
    """Start the local broker (or find the running one); prints its bootstrap address.

    A restart keeps the data directory and, when free, the same port.
    """
    from stream.broker import KafkaSetupError, start_detached_broker

    try:
        state = start_detached_broker(heap=heap, fresh=fresh)
    except KafkaSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(state.bootstrap)


@broker_app.command("status")
def broker_status_cmd() -> None:
    """Print the local broker's bootstrap address (its data directory and size on stderr);
    exit 1 when it is not running."""
    from stream.broker import broker_status, data_dir_size

    state = broker_status()
    if state is None:
        typer.echo("not running", err=True)
        raise typer.Exit(1)
    typer.echo(state.bootstrap)
    data = Path(state.workdir) / "data"
    typer.echo(f"pid {state.pid}, data dir {data} ({data_dir_size(data) / 2**20:.1f} MiB)",
               err=True)


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local broker started by `liverec broker start`."""
    from stream.broker import stop_detached_broker

    state = stop_detached_broker()
    if state is None:
        typer.echo("not running")
        return
    typer.echo(f"stopped {state.bootstrap} (pid {state.pid}); its topics are kept in "
               f"{Path(state.workdir) / 'data'} for the next `liverec broker start` "
               "(`--fresh` starts empty)")


def replay(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV file (plain or .gz)",
                                         exists=True, dir_okay=False)],
    topic: Annotated[str | None, typer.Option(help="target topic [LIVEREC_TOPIC]")] = None,
    preset: Annotated[str | None, typer.Option(
        help="liverec | movielens | online-retail (guessed from the header if omitted)")] = None,
    user_col: Annotated[str | None, typer.Option(help="user column (custom CSV)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item column (custom CSV)")] = None,
    time_col: Annotated[str | None, typer.Option(help="time column (custom CSV)")] = None,
    event_type_col: Annotated[str | None, typer.Option(
        help="event type column: view | click | add_to_cart | purchase (others: see "
             "--event-types; rows still of another type go to the DLQ)")] = None,
    event_types: Annotated[str | None, typer.Option(
        help="your event types as liverec's, e.g. 'like=click,buy=purchase'")] = None,
    rate: Annotated[float | None, typer.Option(help="events per second")] = None,
    speedup: Annotated[float | None, typer.Option(help="times faster than event time")] = None,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="no pacing (default)")] = False,
    bootstrap: Annotated[str | None, typer.Option(
        help="Kafka bootstrap [LIVEREC_KAFKA_BOOTSTRAP or LIVEREC_BOOTSTRAP, else the local "
             "broker]")] = None,
    client: Annotated[str | None, typer.Option(
        help="Kafka client: confluent | kafka-python [LIVEREC_KAFKA_CLIENT]")] = None,
    partitions: Annotated[int | None, typer.Option(
        help="partitions if the topic is created [LIVEREC_PARTITIONS]")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1,
        help="only the first N events in time order (all users' first events, unlike "
             "`head`; the file's invalid rows still go to the dead-letter topic)")] = None,
) -> None:
    """Replay a CSV of interactions into Kafka in event-time order.

    Security (SASL/TLS) comes from the LIVEREC_KAFKA_SECURITY_PROTOCOL,
    LIVEREC_KAFKA_SASL_* and LIVEREC_KAFKA_SSL_* variables.
    """
    from liverec.cmd_models import event_types_option
    from stream.kafka import KafkaClientError, create_topics
    from stream.replay import replay_file

    if sum(x is not None for x in (rate, speedup)) + max_speed > 1:
        raise typer.BadParameter("give at most one of --rate, --speedup, --max-speed")
    settings = kafka_settings(topic=topic, bootstrap=bootstrap, client=client,
                              partitions=partitions)
    types = event_types_option(event_types)  # before any topic is created
    try:
        create_topics(settings, {settings.topic: settings.partitions, settings.dlq_topic: 1})
        result = replay_file(
            file, settings, preset=preset, user_col=user_col, item_col=item_col,
            time_col=time_col, event_type_col=event_type_col, rate=rate, speedup=speedup,
            progress=progress, event_types=types, limit=limit,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except KafkaClientError as exc:
        typer.echo(f"error: Kafka at {settings.bootstrap}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{file} -> {settings.topic}: {result.summary()}")
    if result.failed:
        raise typer.Exit(1)
    if result.interrupted:
        raise typer.Exit(130)  # as an interrupted command exits, after its summary


def refuse_settings(exc: Exception, given: Iterable[str] = ()) -> NoReturn:
    """Exit 2 with one ``error:`` line per bad setting, naming its option (the fields
    in ``given``) or its ``LIVEREC_*`` variable (:func:`liverec.env_vars.settings_errors`)."""
    from liverec.env_vars import settings_errors

    for line in settings_errors(exc, given):
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def kafka_settings(**options: Any) -> KafkaSettings:
    """The Kafka settings of a command: its options (None: not given, so the
    ``LIVEREC_*`` variables and defaults apply), with the local broker's address when no
    bootstrap is configured anywhere. A bad value is a :class:`typer.BadParameter`; no
    bootstrap and no running local broker exits with a hint."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from stream.broker import broker_status
    from stream.settings import KafkaSettings

    given = {k: v for k, v in options.items() if v is not None}
    try:
        settings = KafkaSettings(**given)
    except (ValidationError, SettingsError) as exc:
        refuse_settings(exc, given)
    if settings.bootstrap:
        return settings
    state = broker_status()
    if state is None:
        typer.echo("error: no Kafka: set LIVEREC_KAFKA_BOOTSTRAP or --bootstrap, or run "
                   "`liverec broker start` first", err=True)
        raise typer.Exit(1)
    return settings.with_bootstrap(state.bootstrap)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(broker_app, name="broker")
    app.command("replay")(replay)
