"""`liverec serve`: the HTTP serving process (registered by :mod:`liverec.cli`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from liverec.ports import cannot_listen

if TYPE_CHECKING:
    from serving.settings import ServeSettings


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""

    @app.command("serve")
    def serve(
        snapshots: Annotated[
            Path | None, typer.Option(help="Snapshot root written by the trainer (holds LATEST; "
                                   "default: snapshots) [LIVEREC_SNAPSHOTS].")
        ] = None,
        extra_snapshots: Annotated[
            list[Path] | None,
            typer.Option("--extra-snapshots", metavar="DIR",
                         help="Another trainer's snapshot root whose models are served "
                              "beside these (repeatable; e.g. a seqnn trainer's) "
                              "[LIVEREC_EXTRA_SNAPSHOTS, comma-separated]."),
        ] = None,
        port: Annotated[int | None, typer.Option(
            help="Port to listen on (default: 8000) [LIVEREC_PORT].")] = None,
        host: Annotated[str | None, typer.Option(
            help="Interface to listen on (default: 127.0.0.1) [LIVEREC_HOST].")] = None,
        bootstrap: Annotated[
            str | None,
            typer.Option(help="Kafka bootstrap servers (live context and POST /v1/events) "
                              "[LIVEREC_KAFKA_BOOTSTRAP or LIVEREC_BOOTSTRAP]."),
        ] = None,
        topic: Annotated[str | None, typer.Option(
            help="Click-event topic (default: clicks) [LIVEREC_TOPIC].")] = None,
        trainer_metrics_url: Annotated[
            str | None, typer.Option(help="Trainer /metrics URL scraped for the dashboard "
                                            "[LIVEREC_TRAINER_METRICS_URL].")
        ] = None,
        default_model: Annotated[
            str | None, typer.Option(help="Model used when a request names none (default: ranked; "
                               "where a snapshot lacks it, the first of hybrid, bpr, "
                               "embedding, itemknn, popularity it has) "
                               "[LIVEREC_DEFAULT_MODEL].")
        ] = None,
        ann: Annotated[
            bool | None,
            typer.Option("--ann/--no-ann", help="Approximate (HNSW) top-k for factor models "
                                                  "[LIVEREC_ANN]."),
        ] = None,
        ann_min_items: Annotated[
            int | None,
            typer.Option(help="With --ann: catalogue size from which the index is used "
                              "[LIVEREC_ANN_MIN_ITEMS]."),
        ] = None,
        api_keys_file: Annotated[
            Path | None,
            typer.Option(help="API key file from `liverec keys add` [LIVEREC_API_KEYS_FILE]."),
        ] = None,
        allow_anonymous_writes: Annotated[
            bool,
            typer.Option(
                "--allow-anonymous-writes",
                help="Accept POST /v1/events without a key on a non-loopback interface "
                "(refused at start-up otherwise when no key is configured) "
                "[LIVEREC_ALLOW_ANONYMOUS_WRITES].",
            ),
        ] = False,
        require_read_key: Annotated[
            bool | None,
            typer.Option("--require-read-key/--anonymous-reads",
                         help="Read endpoints need a 'read' key [LIVEREC_REQUIRE_READ_KEY]."),
        ] = None,
        protect_ops: Annotated[
            bool | None,
            typer.Option("--protect-ops/--open-ops",
                         help="/metrics, /v1/model and the dashboard need an 'ops' key "
                              "[LIVEREC_PROTECT_OPS]."),
        ] = None,
        item_features: Annotated[
            Path | None,
            typer.Option("--item-features", exists=True,
                         help="Item content file (MovieLens movies.csv, the Online Retail "
                              "CSV, or a CSV with item_id and text columns) for "
                              "/v1/items/{id}/similar of unclicked items "
                              "[LIVEREC_ITEM_FEATURES]."),
        ] = None,
        item_features_preset: Annotated[
            str | None,
            typer.Option("--features-preset",
                         help="movielens | online-retail | text (default: from the "
                              "header) [LIVEREC_ITEM_FEATURES_PRESET]."),
        ] = None,
        item_features_topic: Annotated[
            str | None,
            typer.Option("--item-features-topic",
                         help="Compacted item-features topic to follow, e.g. "
                              "clicks.item_features [LIVEREC_ITEM_FEATURES_TOPIC]."),
        ] = None,
        cors_origins: Annotated[
            str | None,
            typer.Option(help="Browser origins allowed to call the API from their pages "
                              "(CORS), comma-separated, e.g. https://shop.example.com; "
                              "none by default [LIVEREC_CORS_ORIGINS]."),
        ] = None,
        log_format: Annotated[
            str | None,
            typer.Option(help="Log lines as 'text' or 'json' (one object per line, "
                              "uvicorn's included) [LIVEREC_LOG_FORMAT]."),
        ] = None,
    ) -> None:
        """Serve recommendations from hot-reloaded snapshots (FastAPI + uvicorn).

        Every option may also come from its LIVEREC_<NAME> environment variable
        (--features-preset: LIVEREC_ITEM_FEATURES_PRESET).
        """
        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        from liverec.cmd_stream import refuse_settings
        from liverec.env_vars import warn_unknown
        from liverec.logs import configure_logging
        from serving.app import run
        from serving.auth import AuthConfigError, AuthSettings
        from serving.ratelimit import RateLimitSettings
        from serving.settings import ServeSettings

        given: dict[str, Any] = {
            "snapshots": snapshots,
            "extra_snapshots": tuple(extra_snapshots) if extra_snapshots else None,
            "port": port,
            "host": host,
            "bootstrap": bootstrap,
            "topic": topic,
            "trainer_metrics_url": trainer_metrics_url,
            "default_model": default_model,
            "ann": ann,
            "ann_min_items": ann_min_items,
            "item_features": item_features,
            "item_features_preset": item_features_preset,
            "item_features_topic": item_features_topic,
            "log_format": log_format,
            "cors_origins": cors_origins,
        }
        auth_given: dict[str, Any] = {
            "api_keys_file": api_keys_file,
            "require_read_key": require_read_key,
            "protect_ops": protect_ops,
            "allow_anonymous_writes": allow_anonymous_writes or None,
        }
        try:
            settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
            auth = AuthSettings(**{k: v for k, v in auth_given.items() if v is not None})
            limits = RateLimitSettings()  # LIVEREC_RATE_*: checked here, not inside uvicorn
        except (ValidationError, SettingsError) as exc:  # an option or a LIVEREC_* variable
            if isinstance(exc, ValidationError):
                _refuse_log_settings(exc, log_format_given=log_format is not None)
            refuse_settings(exc, [k for k, v in {**given, **auth_given}.items()
                                  if v is not None])
        if bootstrap is None:
            settings = _with_local_broker(settings)
        if settings.item_features is not None:
            # Read at start-up, inside uvicorn: check the file first, for a clear error.
            from online_models.item_texts import item_texts_source

            try:
                item_texts_source(settings.item_features, settings.item_features_preset)
            except (ValueError, OSError) as exc:
                typer.echo(f"error: --item-features: {exc}", err=True)
                raise typer.Exit(2) from None
        if (taken := cannot_listen(settings.host, settings.port)) is not None:
            # uvicorn would say so only after the snapshot loaded, with exit 3
            typer.echo(f"error: cannot listen on {settings.host}:{settings.port} ({taken}): "
                       "pick another port with --port or LIVEREC_PORT", err=True)
            raise typer.Exit(2)
        configure_logging(settings.log_level, settings.log_format)
        warn_unknown(logging.getLogger("liverec.serve"))
        if not settings.bootstrap and (bootstrap == "" or _bootstrap_variable_set()):
            logging.getLogger("liverec.serve").info(
                "snapshots only (the Kafka bootstrap is set empty): no live context, and "
                "POST /v1/events answers 503 no_producer")
        elif not settings.bootstrap:
            logging.getLogger("liverec.serve").warning(
                "no Kafka: this server runs without live context, and POST /v1/events "
                "answers 503 no_producer, until it is restarted with one (set "
                "LIVEREC_KAFKA_BOOTSTRAP or --bootstrap, or run `liverec broker start` "
                "first)")
        _warn_without_snapshot(settings.snapshots, settings.extra_snapshots)
        # kafka-python logs every failed reconnect (several a second while a broker is
        # down); the live tail and the event sender log each state change with the
        # cause instead, and /readyz and liverec_serving_degraded show it.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        try:
            run(settings, auth=auth, limits=limits)
        except AuthConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc


def _refuse_log_settings(exc: Any, *, log_format_given: bool) -> None:
    """A bad log level or format (``exc``: the settings' ValidationError) as one line
    naming its option or variable and the accepted values, exit 2; else nothing."""
    from stream.logformat import log_format_name, log_level_name

    for error in exc.errors():
        field = error["loc"][0] if error["loc"] else None
        try:
            if field == "log_level":
                log_level_name(error["input"], "LIVEREC_LOG_LEVEL")
            elif field == "log_format":
                log_format_name(error["input"], "--log-format" if log_format_given
                                else "LIVEREC_LOG_FORMAT")
        except ValueError as bad:
            typer.echo(f"error: {bad}", err=True)
            raise typer.Exit(2) from None


def _bootstrap_variable_set() -> bool:
    """Whether the environment sets the Kafka bootstrap (with an empty bootstrap: set to
    "", which means no Kafka, snapshots only)."""
    return any(v in os.environ for v in ("LIVEREC_KAFKA_BOOTSTRAP", "LIVEREC_BOOTSTRAP"))


def _with_local_broker(settings: ServeSettings) -> ServeSettings:
    """``settings`` with the local broker (``liverec broker start``) as its bootstrap
    when none is configured and that broker runs, as train and replay do. A variable
    set to "" (``LIVEREC_KAFKA_BOOTSTRAP=``) means no Kafka: serve snapshots only."""
    if settings.bootstrap or _bootstrap_variable_set():
        return settings
    from stream.broker import broker_status

    state = broker_status()
    if state is None:
        return settings
    return settings.model_copy(update={"kafka": settings.kafka.with_bootstrap(state.bootstrap)})


def _warn_without_snapshot(main: Path, extra: tuple[Path, ...]) -> None:
    """Log each snapshot root that holds no snapshot yet: legitimate before a trainer's
    first one, but also what a mistyped ``--snapshots`` looks like. A root that does
    not exist is waited for, never created (the server only reads; it may be a
    read-only mount)."""
    from online_models.snapshot import SnapshotStore

    log = logging.getLogger("liverec.serve")
    for root in (main, *extra):
        if root.is_dir() and SnapshotStore(root, create=False).latest_version() is not None:
            continue
        missing = "" if root.exists() else (
            " (the directory does not exist; the server waits for it to appear and does "
            "not create it)")
        if root == main:
            log.warning("no snapshot under %s yet%s: /readyz answers 503 until a trainer "
                        "writes one there (is this the trainer's --snapshots?)",
                        root.resolve(), missing)
        else:
            log.warning("no snapshot under --extra-snapshots %s yet%s: its models are not "
                        "served, and /readyz says degraded (extra_snapshot_missing), until "
                        "a trainer writes one there", root.resolve(), missing)
