"""Item content in the trainer: one :class:`~online_models.content.ItemFeatures` for all models.

Where it comes from, in order: the features the restored snapshot's models carry
(every content model exports its features with its state, so a snapshot holds the
content it was learned with), then ``TrainerSettings.item_features`` (a file read
through a preset), then the ``item_features_topic`` (compacted, keyed by item id),
read from its beginning by a background thread. The topic's updates are applied by
the learning thread between batches (:meth:`TrainerContent.apply_pending`), so
content never changes under a model while it learns or is evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from online_models import registry
from online_models.base import OnlineModel
from online_models.content import ItemFeatures
from stream.item_features import ItemFeaturesTail
from stream.settings import KafkaSettings
from trainer.settings import TrainerSettings

__all__ = ["TrainerContent"]

log = logging.getLogger(__name__)


class TrainerContent:
    """The trainer's item features and the reader of the item-features topic.

    Does nothing (``features`` stays None, models keep what they restored) unless
    a file or a topic is configured.
    """

    def __init__(self, settings: TrainerSettings, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.kafka = kafka
        self.features: ItemFeatures | None = None
        self.tail: ItemFeaturesTail | None = None
        #: items whose content came from the topic (tombstones included)
        self.applied = 0

    @property
    def enabled(self) -> bool:
        return self.settings.item_features is not None or bool(self.settings.item_features_topic)

    def attach(self, models: Mapping[str, OnlineModel]) -> None:
        """Build the features (restored ones first, then the file) and hand them out."""
        restored = [f for m in models.values()
                    if isinstance(f := getattr(m, "features", None), ItemFeatures)]
        if not self.enabled:
            rankers = registry.content_rankers(models)
            if rankers and not any(len(f) for f in restored):
                log.warning("%s ranks by item content, and none is given: it ranks by "
                            "popularity alone. Pass --item-features (a file) or "
                            "--item-features-topic", ", ".join(rankers))
            return
        features = restored[0] if restored else ItemFeatures()
        path = self.settings.item_features
        if path is not None:
            from online_models.item_texts import read_item_texts

            features.update(read_item_texts(path, self.settings.item_features_preset))
        took = registry.give_item_features(models, features)
        self.features = features
        log.info("item content of %d items (%s) given to %s", len(features),
                 "restored + file" if restored and path else "file" if path else "restored",
                 ", ".join(took) or "no model")

    def start(self) -> None:
        topic = self.settings.item_features_topic
        if topic and self.tail is None:
            self.tail = ItemFeaturesTail(self.kafka, topic, client_id="liverec-trainer-features")
            self.tail.start()

    def apply_pending(self) -> int:
        """Apply the topic's updates read so far (call from the learning thread)."""
        if self.tail is None or self.features is None or not self.tail.pending:
            return 0
        updates = self.tail.drain()
        self.features.update(updates)
        self.applied += len(updates)
        return len(updates)

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.stop()
            self.tail = None
