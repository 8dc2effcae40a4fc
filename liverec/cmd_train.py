"""`liverec train`: the trainer service (registered by :mod:`liverec.cli`).

Every option falls back to its ``LIVEREC_<NAME>`` environment variable (``--features-preset``:
``LIVEREC_ITEM_FEATURES_PRESET``) through two
settings objects, one per concern: :class:`trainer.TrainerSettings` (what to learn) and
:class:`stream.settings.KafkaSettings` (where the stream comes from, shared with
``serve`` and ``replay``); an option given on the command line wins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer


def train(
    ctx: typer.Context,
    bootstrap: Annotated[str | None, typer.Option(
        help="Kafka bootstrap host:port [LIVEREC_KAFKA_BOOTSTRAP / LIVEREC_BOOTSTRAP]")] = None,
    topic: Annotated[str | None, typer.Option(
        help="click topic (default: clicks) [LIVEREC_TOPIC]")] = None,
    kafka_client: Annotated[str | None, typer.Option(
        "--kafka-client", "--client",
        help="Kafka client library: confluent (librdkafka) or kafka-python "
             "[LIVEREC_KAFKA_CLIENT]")] = None,
    group: Annotated[str | None, typer.Option(
        help="consumer group (default: liverec-trainer) [LIVEREC_GROUP]")] = None,
    snapshots: Annotated[Path | None, typer.Option(
        help="snapshot directory (default: snapshots) [LIVEREC_SNAPSHOTS]")] = None,
    models: Annotated[str | None, typer.Option(
        help="'all' or comma-separated registry names (default: all) [LIVEREC_MODELS]")] = None,
    model_params: Annotated[str | None, typer.Option(
        help='JSON {"model": {"param": value}} for fresh models [LIVEREC_MODEL_PARAMS]')] = None,
    follow: Annotated[list[str] | None, typer.Option(
        metavar="MODEL=DIR",
        help="a model another trainer learns into snapshot directory DIR (e.g. "
             "seqnn=./snapshots-seqnn, from `liverec train --models seqnn --group "
             "liverec-seqnn --snapshots ./snapshots-seqnn`): this trainer evaluates it, "
             "its hybrid and re-ranker blend it (name it in their components), its "
             "snapshots carry it, it never learns it; reloaded when DIR's LATEST moves; "
             "repeatable [LIVEREC_FOLLOW, comma-separated]")] = None,
    follow_every_s: Annotated[float | None, typer.Option(
        help="seconds between checks of the followed directories [LIVEREC_FOLLOW_EVERY_S]"
    )] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="events per mini-batch: each model learns once per batch (default: 256) "
             "[LIVEREC_BATCH_SIZE]")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(
        help="longest a batch waits to fill up, in ms; a quiet stream hands it over "
             "early (default: 200) [LIVEREC_MAX_WAIT_MS]")] = None,
    snapshot_every_s: Annotated[float | None, typer.Option(
        help="seconds between snapshots (default: 1.0) [LIVEREC_SNAPSHOT_EVERY_S]")] = None,
    snapshot_max_share: Annotated[float | None, typer.Option(
        help="most of the learner's time copying state for snapshots may take while it "
             "has a backlog (else also half its idle time); larger states space "
             "snapshots out (0 = never) [LIVEREC_SNAPSHOT_MAX_SHARE]")] = None,
    snapshot_write_share: Annotated[float | None, typer.Option(
        help="most of the time the background thread may spend writing snapshots; "
             "slower writes space snapshots out (0 = never) [LIVEREC_SNAPSHOT_WRITE_SHARE]"
    )] = None,
    keep_snapshots: Annotated[int | None, typer.Option(
        help="versions kept on disk (default: 5) [LIVEREC_KEEP_SNAPSHOTS]")] = None,
    on_missing_snapshot: Annotated[str | None, typer.Option(
        help="no valid snapshot, but the group committed offsets on the topic (the "
             "model they stand for is lost): 'refuse' (default) stops with what to do, "
             "'resume' starts at the commits with an empty model (--scale-out: per "
             "assigned partition) [LIVEREC_ON_MISSING_SNAPSHOT]")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="Prometheus port; 0 = a free one (logged), -1 = none (default: 9101) "
             "[LIVEREC_METRICS_PORT]")
    ] = None,
    drift_adapt: Annotated[bool | None, typer.Option(
        "--drift-adapt/--no-drift-adapt",
        help="shorten half-lives / raise learning rates after a drift alarm "
             "[LIVEREC_DRIFT_ADAPT]")] = None,
    max_events: Annotated[int | None, typer.Option(
        help="stop after learning this many events [LIVEREC_MAX_EVENTS]")] = None,
    until_events_total: Annotated[int | None, typer.Option(
        help="stop once events_total (across restarts) reaches this; a single trainer "
             "only [LIVEREC_UNTIL_EVENTS_TOTAL]")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="stop after this many seconds [LIVEREC_MAX_SECONDS]")] = None,
    idle_exit_s: Annotated[float | None, typer.Option(
        help="stop after this many seconds without records while holding partitions "
             "[LIVEREC_IDLE_EXIT_S]")] = None,
    join_timeout_s: Annotated[float | None, typer.Option(
        help="rebuild the consumer after this many seconds without partitions "
             "(doubling); a single trainer only (a scale-out member without partitions "
             "waits in its group) [LIVEREC_JOIN_TIMEOUT_S]")] = None,
    eval_sample: Annotated[float | None, typer.Option(
        help="prequential evaluation: the fraction of evaluable events scored, seeded "
             "(1 = all) [LIVEREC_EVAL_SAMPLE]")] = None,
    eval_budget_per_s: Annotated[float | None, typer.Option(
        help="... at most this many scored events per second (0 = automatic: see "
             "--eval-cpu-share) [LIVEREC_EVAL_BUDGET_PER_S]")] = None,
    eval_cpu_share: Annotated[float | None, typer.Option(
        help="automatic budget: evaluation CPU time (per-event bookkeeping plus scoring) "
             "as a share of the trainer's CPU time, but at least 1000 scored events a "
             "minute unless the trainer has a backlog "
             "(0 = score the whole sample) "
             "[LIVEREC_EVAL_CPU_SHARE]")] = None,
    prefetch_batches: Annotated[int | None, typer.Option(
        help="decoded batches polled ahead of learning [LIVEREC_PREFETCH_BATCHES]")] = None,
    source: Annotated[str | None, typer.Option(
        help="who polls and decodes: 'process' (a child process, off the learner's "
             "GIL; client confluent only; the group membership, commits and dead-letter "
             "topic stay in the trainer), 'thread', or 'auto' (default: process with "
             "confluent, thread with kafka-python) [LIVEREC_SOURCE]")] = None,
    history_max_users: Annotated[int | None, typer.Option(
        help="most users whose history the trainer keeps (default 1,000,000); the least "
             "recently active beyond it are forgotten: history, evaluation counts and "
             "every model's state of them [LIVEREC_HISTORY_MAX_USERS]")] = None,
    session_timeout_ms: Annotated[int | None, typer.Option(
        help="consumer-group session timeout [LIVEREC_SESSION_TIMEOUT_MS]")] = None,
    status_every_s: Annotated[float | None, typer.Option(
        help="seconds between status lines [LIVEREC_STATUS_EVERY_S]")] = None,
    item_features: Annotated[Path | None, typer.Option(
        "--item-features", exists=True,
        help="item content for the models that use it: MovieLens movies.csv, the Online "
             "Retail CSV, or a CSV with item_id and text columns "
             "[LIVEREC_ITEM_FEATURES]")] = None,
    item_features_preset: Annotated[str | None, typer.Option(
        "--features-preset",
        help="movielens | online-retail | text (default: from the header) "
             "[LIVEREC_ITEM_FEATURES_PRESET]")] = None,
    item_features_topic: Annotated[str | None, typer.Option(
        "--item-features-topic",
        help="compacted item-features topic to read (e.g. clicks.item_features, what "
             "`liverec features publish` writes) [LIVEREC_ITEM_FEATURES_TOPIC]")] = None,
    scale_out: Annotated[bool | None, typer.Option(
        "--scale-out/--single",
        help="scale-out mode: run N trainers with the same --group and --snapshots on a "
             "topic of >= N partitions; each owns the users of its partitions and they "
             "share item state through <topic>.updates (exactly once, Kafka transactions; "
             "confluent client; popularity, itemknn, sequence, bpr only; the owner of "
             "the last partition folds the updates and evaluates, so 2N-1 partitions "
             "give it one and the others two) [LIVEREC_SCALE_OUT]")
    ] = None,
    instance_id: Annotated[str | None, typer.Option(
        help="scale-out: this trainer's stable name, unique in the group; restart a "
             "crashed trainer with the same one (default: host name) "
             "[LIVEREC_INSTANCE_ID]")] = None,
    merge_every_s: Annotated[float | None, typer.Option(
        help="scale-out: seconds between merged (servable) snapshots "
             "[LIVEREC_MERGE_EVERY_S]")] = None,
    fold_every_s: Annotated[float | None, typer.Option(
        help="scale-out: seconds the folding trainer gathers update messages before it "
             "folds them in one go (0: after every read) [LIVEREC_FOLD_EVERY_S]")] = None,
    commit_every_s: Annotated[float | None, typer.Option(
        help="scale-out: seconds a Kafka transaction stays open over consecutive full "
             "polls before their updates and offsets commit together (0: one per poll; a "
             "poll that is not full commits at once; at most half of "
             "LIVEREC_TRANSACTION_TIMEOUT_MS) [LIVEREC_COMMIT_EVERY_S]")] = None,
    log_level: Annotated[str, typer.Option(
        help="logging level: debug, info, warning, error or critical (any case)",
        envvar="LIVEREC_LOG_LEVEL")] = "INFO",
    log_format: Annotated[str, typer.Option(
        help="log lines as 'text' or 'json' (one object per line, for a log pipeline)",
        envvar="LIVEREC_LOG_FORMAT")] = "text",
) -> None:
    """Consume clicks, evaluate a sample prequentially, learn, snapshot, commit; serve /metrics.

    One process is one member of the consumer group --group and the only writer of
    --snapshots. With --scale-out, N processes share --group and --snapshots (each with
    its own --instance-id) and build one model: `liverec serve --snapshots` on that
    location serves the merged model. Runs until SIGTERM/SIGINT (then: a last snapshot, its offsets
    committed, the group left) or a --max-* limit. Security (SASL/TLS) comes from the
    LIVEREC_KAFKA_SECURITY_PROTOCOL, LIVEREC_KAFKA_SASL_* and LIVEREC_KAFKA_SSL_*
    variables; the flood guard from LIVEREC_FLOOD_*.
    """
    from liverec.env_vars import warn_unknown
    from liverec.logs import configure_logging, log_format_name, log_level_name

    try:
        log_level = log_level_name(log_level, _option_or_variable(ctx, "log_level"))
        log_format = log_format_name(log_format, _option_or_variable(ctx, "log_format"))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    import orjson
    from prometheus_client import start_http_server
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from liverec.cmd_stream import kafka_settings, refuse_settings
    from trainer import Trainer, TrainerSettings
    from trainer.checkpoint import SnapshotLocationBusy
    from trainer.lost_snapshot import MissingSnapshotError
    from trainer.metrics import TrainerMetrics

    configure_logging(log_level, log_format)
    log = logging.getLogger("liverec.train")
    warn_unknown(log)
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "group": group, "snapshots": snapshots,
            "models": models, "batch_size": batch_size, "max_wait_ms": max_wait_ms,
            "snapshot_every_s": snapshot_every_s, "snapshot_max_share": snapshot_max_share,
            "snapshot_write_share": snapshot_write_share,
            "keep_snapshots": keep_snapshots, "on_missing_snapshot": on_missing_snapshot,
            "metrics_port": metrics_port, "drift_adapt": drift_adapt, "max_events": max_events,
            "until_events_total": until_events_total, "max_seconds": max_seconds,
            "idle_exit_s": idle_exit_s, "join_timeout_s": join_timeout_s,
            "status_every_s": status_every_s,
            "eval_sample": eval_sample, "eval_budget_per_s": eval_budget_per_s,
            "eval_cpu_share": eval_cpu_share,
            "prefetch_batches": prefetch_batches, "source": source,
            "session_timeout_ms": session_timeout_ms,
            "history_max_users": history_max_users,
            "item_features": item_features, "item_features_preset": item_features_preset,
            "item_features_topic": item_features_topic,
            "scale_out": scale_out, "instance_id": instance_id, "merge_every_s": merge_every_s,
            "fold_every_s": fold_every_s, "commit_every_s": commit_every_s,
            "follow": follow or None, "follow_every_s": follow_every_s,
        }.items()
        if v is not None
    }
    try:
        if model_params is not None:
            given["model_params"] = orjson.loads(model_params)
        settings = TrainerSettings(**given)
        settings.model_names()
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--model-params") from exc
    except (ValidationError, SettingsError) as exc:
        refuse_settings(exc, given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    kafka = kafka_settings(bootstrap=bootstrap, topic=topic, client=kafka_client)

    metrics = TrainerMetrics(settings.model_names(), kafka.topic)
    server = None
    if settings.metrics_port >= 0:
        try:
            server, _ = start_http_server(
                settings.metrics_port, addr=settings.metrics_addr, registry=metrics.registry
            )
        except OSError as exc:
            typer.echo(f"error: cannot serve metrics on {settings.metrics_addr}:"
                       f"{settings.metrics_port}: {exc.strerror or exc} (--metrics-port 0 "
                       "picks a free port, -1 turns them off)", err=True)
            raise typer.Exit(2) from None
        log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, server.server_port)
    if settings.scale_out:
        try:
            _run_scale_out(settings, kafka, metrics)
        finally:
            if server is not None:
                server.shutdown()
        return
    try:
        trainer = Trainer(settings, kafka, metrics)
    except (SnapshotLocationBusy, MissingSnapshotError) as exc:  # refused at restore
        if server is not None:
            server.shutdown()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        if server is not None:
            server.shutdown()
        raise typer.BadParameter(str(exc)) from exc
    except OSError as exc:  # the snapshot location: not creatable, not writable
        if server is not None:
            server.shutdown()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        result = trainer.run()
    except (SnapshotLocationBusy, MissingSnapshotError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if server is not None:
            server.shutdown()
    capped = sum(result.capped.values())
    by_reason = ", ".join(f"{r}={n}" for r, n in sorted(result.capped.items()))
    typer.echo(
        f"learned {result.events_learned} events (events_total {result.events_total}, "
        f"duplicates {result.duplicates}, rejected {result.rejected}, capped by the flood "
        f"guard {capped}{f' ({by_reason})' if capped else ''}) in "
        f"{result.seconds:.1f} s; snapshot {result.snapshot_version}"
    )
    if result.first_batch_s is not None and result.learning_s > 0:
        typer.echo(f"  first batch after {result.first_batch_s:.2f} s, {_rates(result)}, "
                   f"shutdown {result.shutdown_s:.2f} s")


def _option_or_variable(ctx: typer.Context, name: str) -> str:
    """How the user gave parameter ``name`` (a flag with an environment variable): its
    variable when it came from there, else its flag."""
    param = next(p for p in ctx.command.params if p.name == name)
    source = ctx.get_parameter_source(name)
    if source is not None and source.name == "ENVIRONMENT":
        return str(param.envvar)
    return str(param.opts[0])


def _rates(result: Any) -> str:
    """The learning phase's rate and, when it waited for records, the rate while busy
    (tests/trainer/test_trainer_unit.py)."""
    n, learning, busy = result.events_learned, result.learning_s, result.busy_s
    share = min(1.0, busy / learning)
    text = f"learning {learning:.1f} s ({n / learning:,.0f} events/s; busy {share:.0%} of it"
    if share < 0.95 and busy > 0:  # it waited for records: the average is not its speed
        text += f": {n / busy:,.0f} events/s while busy"
    return text + ")"


def _run_scale_out(settings: Any, kafka: Any, metrics: Any) -> None:
    from stream.kafka import KafkaClientError
    from trainer.checkpoint import SnapshotLocationBusy
    from trainer.lost_snapshot import MissingSnapshotError
    from trainer.partitioned import ScaleOutTrainer

    try:
        trainer = ScaleOutTrainer(settings, kafka, metrics)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        result = trainer.run()
    except (SnapshotLocationBusy, MissingSnapshotError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KafkaClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(
        f"learned {result.events_learned} events (+{result.events_replayed} re-learned "
        f"user-side after a takeover), {result.updates_published} update messages "
        f"({result.update_bytes} bytes) in {result.transactions} transactions, "
        f"{result.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("train")(train)
