"""Typed Kafka and event-contract settings (env prefix ``LIVEREC_``).

One :class:`KafkaSettings` object is built per process (``KafkaSettings()`` reads the
environment) and passed in explicitly to everything that talks to Kafka: the
trainer's consumer, replay, the server's tail and producer, and the topic admin.
Nothing in :mod:`stream` reads the environment behind the caller's back except
:func:`stream.broker.resolve_bootstrap`, whose whole job is to do so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.events import ID_CHARS_BOUND
from stream.weights import DEFAULT_EVENT_WEIGHTS

if TYPE_CHECKING:
    from stream.events import Limits

__all__ = ["DEFAULT_EVENT_WEIGHTS", "KafkaSettings", "StreamSettings", "read_secret"]

ClientName = Literal["confluent", "kafka-python"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _env(name: str, *more: str) -> AliasChoices:
    """Read ``LIVEREC_KAFKA_<NAME>`` (then ``more``) from the environment; the field
    name itself still works as a keyword (``populate_by_name``)."""
    return AliasChoices(f"LIVEREC_KAFKA_{name.upper()}", *more)


def read_secret(value: object) -> object:
    """A secret given as ``@path`` is read from that file (one trailing newline dropped).

    >>> read_secret("plain")
    'plain'
    """
    if isinstance(value, str) and value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {path}: {exc.strerror}") from None
        return text[:-1] if text.endswith("\n") else text
    return value


class KafkaSettings(BaseSettings):
    """Where the events are and how to talk to Kafka, read from ``LIVEREC_*`` variables.

    Shared by ``liverec train``, ``liverec serve`` and ``liverec replay``.

    Parameters
    ----------
    bootstrap
        ``LIVEREC_KAFKA_BOOTSTRAP`` or ``LIVEREC_BOOTSTRAP`` (the first wins): an
        existing cluster, ``host:port[,host:port]``. Empty means "find or start one"
        (see :func:`stream.broker.resolve_bootstrap`).
    topic
        ``LIVEREC_TOPIC``: the click-event topic; rejects go to :attr:`dlq_topic`.
    client
        ``LIVEREC_KAFKA_CLIENT``: ``confluent`` (librdkafka, the default) or
        ``kafka-python``; both sit behind :mod:`stream.kafka`'s interface.
    partitions
        ``LIVEREC_PARTITIONS``: partitions of topics this project creates.
    replication_factor
        ``LIVEREC_KAFKA_REPLICATION_FACTOR``: replicas of topics this project creates
        (the click topic and its ``.dlq`` by ``replay``, the item-features and
        scale-out update topics); -1 (the default) takes the cluster's
        ``default.replication.factor``. Topics that already exist are left as they are.
    event_weights
        ``LIVEREC_EVENT_WEIGHTS`` as JSON, e.g. ``{"view": 1, "click": 2,
        "add_to_cart": 3, "purchase": 10}``; every known event type must be present.
        The trainer's learning weights and the server's live context both use it.
    max_event_bytes, max_id_chars, max_context_keys
        Size limits of one event on the wire (``LIVEREC_MAX_EVENT_BYTES``, ...).
    max_future_s, max_past_s
        How far from "now" an event timestamp may lie before it is rejected.
    dlq_max_bytes
        ``LIVEREC_DLQ_MAX_BYTES``: a dead-letter copy keeps at most this many bytes
        of the rejected payload (the rest is cut, a header says so and keeps the
        original's size and SHA-256), so a DLQ record always fits the broker's limit.
    security_protocol
        ``LIVEREC_KAFKA_SECURITY_PROTOCOL``: ``PLAINTEXT``, ``SSL``,
        ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    sasl_mechanism, sasl_username, sasl_password
        ``LIVEREC_KAFKA_SASL_*``: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``
        and the credentials. A password given as ``@path`` is read from that file;
        it never appears in ``repr`` or logs.
    ssl_cafile, ssl_certfile, ssl_keyfile, ssl_key_password
        ``LIVEREC_KAFKA_SSL_*``: CA bundle (PEM) to verify the brokers, and an
        optional client certificate, key and key password (``@path`` allowed).

    Examples
    --------
    >>> s = KafkaSettings(bootstrap="localhost:9092", topic="clicks")
    >>> s.dlq_topic, s.client, s.event_weights["purchase"]
    ('clicks.dlq', 'confluent', 5.0)
    >>> KafkaSettings(security_protocol="SASL_SSL", sasl_password="hunter2").sasl_password
    SecretStr('**********')
    """

    # An error's input would hold the whole input, secrets in clear text included.
    model_config = SettingsConfigDict(
        env_prefix="LIVEREC_", extra="ignore", populate_by_name=True,
        hide_input_in_errors=True,
    )

    bootstrap: str = Field(
        default="",
        validation_alias=AliasChoices("LIVEREC_KAFKA_BOOTSTRAP", "LIVEREC_BOOTSTRAP"),
    )
    topic: str = Field(default="clicks", min_length=1)
    client: ClientName = Field(default="confluent", validation_alias=_env("client"))
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=-1, ge=-1, le=32,
                                    validation_alias=_env("replication_factor"))
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS)
    )
    #: largest event record, in bytes of JSON; a larger one is rejected (the trainer
    #: sends it to the dead-letter topic)
    max_event_bytes: int = Field(default=8192, ge=256)
    #: longest ``event_id``, ``user_id``, ``item_id`` and ``session_id``, in characters
    #: (at most 256: the server's routes take no longer id)
    max_id_chars: int = Field(default=ID_CHARS_BOUND, ge=1, le=ID_CHARS_BOUND)
    #: most keys of an event's ``context`` object
    max_context_keys: int = Field(default=16, ge=0)
    max_future_s: float = Field(default=86_400.0, ge=0)
    max_past_s: float = Field(default=50 * 365.25 * 86_400.0, ge=0)
    dlq_max_bytes: int = Field(default=64 * 1024, ge=1024, le=512 * 1024)

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", validation_alias=_env("security_protocol"))
    sasl_mechanism: SaslMechanism = Field(
        default="SCRAM-SHA-512", validation_alias=_env("sasl_mechanism"))
    sasl_username: str | None = Field(default=None, validation_alias=_env("sasl_username"))
    sasl_password: SecretStr | None = Field(
        default=None, validation_alias=_env("sasl_password"))
    ssl_cafile: Path | None = Field(default=None, validation_alias=_env("ssl_cafile"))
    ssl_certfile: Path | None = Field(default=None, validation_alias=_env("ssl_certfile"))
    ssl_keyfile: Path | None = Field(default=None, validation_alias=_env("ssl_keyfile"))
    ssl_key_password: SecretStr | None = Field(
        default=None, validation_alias=_env("ssl_key_password"))

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
        if any(not math.isfinite(w) or w < 0 for w in v.values()):
            raise ValueError("event_weights must be finite and not negative")
        return v

    @field_validator("sasl_password", "ssl_key_password", mode="before")
    @classmethod
    def _secret_from_file(cls, v: Any) -> Any:
        return read_secret(v)

    @field_validator("replication_factor")
    @classmethod
    def _replicas(cls, v: int) -> int:
        if v == 0:
            raise ValueError("replication_factor is -1 (the cluster's default) or >= 1")
        return v

    @field_validator("bootstrap")
    @classmethod
    def _strip(cls, v: str) -> str:
        return ",".join(s.strip() for s in v.split(",") if s.strip())

    @model_validator(mode="after")
    def _no_ignored_security_fields(self) -> KafkaSettings:
        """SASL or TLS fields the protocol would ignore are a mistake, not a default:
        the client would connect without authenticating, or without TLS."""
        sasl = [n for n in ("sasl_username", "sasl_password") if getattr(self, n) is not None]
        tls = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
               if getattr(self, n) is not None]
        ignored = ([] if self.uses_sasl else sasl) + ([] if self.uses_ssl else tls)
        if ignored:
            wanted = ("SASL_SSL" if sasl and (tls or self.uses_ssl) else
                      "SASL_PLAINTEXT or SASL_SSL" if sasl else "SSL or SASL_SSL")
            names = ", ".join(f"LIVEREC_KAFKA_{n.upper()}" for n in ignored)
            raise ValueError(
                f"{names} set, but the security protocol is {self.security_protocol}, "
                f"which ignores them: the client would connect without them. Set "
                f"LIVEREC_KAFKA_SECURITY_PROTOCOL ({wanted}) or unset them.")
        return self

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic of :attr:`topic`."""
        return f"{self.topic}.dlq"

    @property
    def uses_sasl(self) -> bool:
        """Whether the security protocol authenticates with SASL."""
        return self.security_protocol.startswith("SASL")

    @property
    def uses_ssl(self) -> bool:
        """Whether the security protocol encrypts with TLS."""
        return self.security_protocol.endswith("SSL")

    def security_values(self) -> dict[str, str]:
        """The security fields in force beyond the protocol, secrets revealed: SASL
        fields under SASL, TLS fields under SSL, unset ones left out. Each Kafka client
        translates these names to its own configuration keys.

        >>> KafkaSettings(security_protocol="SASL_PLAINTEXT",
        ...               sasl_username="u").security_values()
        {'sasl_mechanism': 'SCRAM-SHA-512', 'sasl_username': 'u'}
        """
        fields: tuple[str, ...] = ()
        if self.uses_sasl:
            fields += ("sasl_mechanism", "sasl_username", "sasl_password")
        if self.uses_ssl:
            fields += ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
        out: dict[str, str] = {}
        for name in fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = (value.get_secret_value() if isinstance(value, SecretStr)
                             else str(value))
        return out

    @property
    def limits(self) -> Limits:
        """The event validation limits (:class:`stream.events.Limits`)."""
        from stream.events import Limits

        return Limits.from_settings(self)

    def with_bootstrap(self, bootstrap: str) -> KafkaSettings:
        """A copy pointing at ``bootstrap`` (everything else unchanged)."""
        return self.model_copy(update={"bootstrap": _join(bootstrap)})


def _join(bootstrap: str) -> str:
    return ",".join(s.strip() for s in bootstrap.split(",") if s.strip())


#: The former name (before train, serve and replay shared one Kafka settings object).
StreamSettings = KafkaSettings
