"""Typed settings of the stream side (env prefix ``LIVEREC_``).

One :class:`StreamSettings` object is built per process (``StreamSettings()`` reads
the environment) and passed in explicitly; nothing in :mod:`stream` reads the
environment behind the caller's back except :func:`stream.broker.resolve_bootstrap`,
whose whole job is to do so.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_EVENT_WEIGHTS", "StreamSettings"]

#: Learning weight of each event type (stronger intent weighs more).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
}


class StreamSettings(BaseSettings):
    """Kafka and event-contract settings, read from ``LIVEREC_*`` variables.

    Parameters
    ----------
    kafka_bootstrap
        ``LIVEREC_KAFKA_BOOTSTRAP``: an existing cluster (``host:port[,host:port]``).
        Empty means "find or start one" (see :func:`stream.broker.resolve_bootstrap`).
    topic, group_id
        Click-event topic and the trainer's consumer group.
    partitions
        Partitions of topics this project creates.
    batch_size, max_wait_ms
        Mini-batch bounds: a batch is handed over when it holds ``batch_size``
        events or ``max_wait_ms`` has passed.
    event_weights
        ``LIVEREC_EVENT_WEIGHTS`` as JSON, e.g. ``{"view": 1, "purchase": 10}``;
        every known event type must be present.
    max_event_bytes, max_id_chars, max_context_keys
        Size limits of one event on the wire.
    max_future_s, max_past_s
        How far from "now" an event timestamp may lie before it is rejected.

    Examples
    --------
    >>> s = StreamSettings(topic="clicks", batch_size=64)
    >>> s.dlq_topic, s.event_weights["purchase"]
    ('clicks.dlq', 5.0)
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_", extra="ignore")

    kafka_bootstrap: str = ""
    topic: str = "clicks"
    group_id: str = "liverec-trainer"
    partitions: int = Field(default=4, ge=1)
    batch_size: int = Field(default=256, ge=1)
    max_wait_ms: int = Field(default=200, ge=1)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS)
    )
    max_event_bytes: int = Field(default=8192, ge=256)
    max_id_chars: int = Field(default=256, ge=1)
    max_context_keys: int = Field(default=16, ge=0)
    max_future_s: float = Field(default=86_400.0, ge=0)
    max_past_s: float = Field(default=50 * 365.25 * 86_400.0, ge=0)

    @field_validator("event_weights")
    @classmethod
    def _known_types(cls, v: dict[str, float]) -> dict[str, float]:
        missing = set(DEFAULT_EVENT_WEIGHTS) - set(v)
        unknown = set(v) - set(DEFAULT_EVENT_WEIGHTS)
        if missing or unknown:
            raise ValueError(
                f"event_weights must give exactly {sorted(DEFAULT_EVENT_WEIGHTS)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return v

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic of :attr:`topic`."""
        return f"{self.topic}.dlq"
