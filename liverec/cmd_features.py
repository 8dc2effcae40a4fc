"""`liverec features publish`: item content onto the compacted item-features topic.

Registered by :mod:`liverec.cli`. The trainer (``liverec train
--item-features-topic``) and the server (``liverec serve --item-features-topic``)
read the topic; see :mod:`stream.item_features` for its records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

features_app = typer.Typer(
    rich_markup_mode=None,help="Item content (hashed token features) for the models.",
                           no_args_is_help=True)


@features_app.command("publish")
def publish(
    path: Annotated[Path, typer.Argument(
        metavar="PATH",
        help="MovieLens movies.csv (or ratings.csv / its folder), the Online Retail CSV, "
             "or a CSV with item_id and text columns",
        exists=True)],
    preset: Annotated[str | None, typer.Option(
        help="movielens | online-retail | text (guessed from the header if omitted)"
    )] = None,
    topic: Annotated[str | None, typer.Option(
        help="click topic; the features go to <topic>.item_features [LIVEREC_TOPIC]")] = None,
    features_topic: Annotated[str | None, typer.Option(
        "--features-topic", help="write here instead of <topic>.item_features")] = None,
    bootstrap: Annotated[str | None, typer.Option(
        help="Kafka bootstrap [LIVEREC_KAFKA_BOOTSTRAP or LIVEREC_BOOTSTRAP, else the local "
             "broker]")] = None,
    client: Annotated[str | None, typer.Option(
        help="Kafka client: confluent | kafka-python [LIVEREC_KAFKA_CLIENT]")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="only the first N items of the file")] = None,
) -> None:
    """Publish every item's content (one record per item id) to the compacted topic.

    Creates the topic with cleanup.policy=compact when it is missing. Publishing again
    replaces an item's content (the latest record per item wins).
    """
    from liverec.cmd_stream import kafka_settings
    from online_models.item_texts import read_item_texts
    from stream.item_features import item_features_topic, publish_item_features
    from stream.kafka import KafkaClientError

    settings = kafka_settings(topic=topic, bootstrap=bootstrap, client=client)
    try:
        texts = read_item_texts(path, preset)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if limit is not None:
        texts = dict(list(texts.items())[:limit])
    target = features_topic or item_features_topic(settings.topic)
    try:
        n = publish_item_features(settings, texts, target)
    except KafkaClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published the content of {n} items to {target} (compacted)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(features_app, name="features")
