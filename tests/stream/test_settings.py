"""One Kafka settings object for train, serve and replay (issue 9 item 6, issue 11 item 6)."""

from __future__ import annotations

import pytest

from serving.settings import ServeSettings
from stream.settings import KafkaSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVEREC_KAFKA_BOOTSTRAP", "LIVEREC_BOOTSTRAP", "LIVEREC_TOPIC",
                 "LIVEREC_KAFKA_CLIENT", "LIVEREC_EVENT_WEIGHTS", "LIVEREC_KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def test_bootstrap_from_either_variable_kafka_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().bootstrap == ""
    monkeypatch.setenv("LIVEREC_BOOTSTRAP", "old:1")
    assert KafkaSettings().bootstrap == "old:1"
    monkeypatch.setenv("LIVEREC_KAFKA_BOOTSTRAP", " new:1 , new:2 ")
    assert KafkaSettings().bootstrap == "new:1,new:2"
    assert KafkaSettings(bootstrap="given:1").bootstrap == "given:1"


def test_unprefixed_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTSTRAP", "nope:1")
    monkeypatch.setenv("CLIENT", "nope")
    s = KafkaSettings()
    assert (s.bootstrap, s.client) == ("", "confluent")


def test_client_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEREC_KAFKA_CLIENT", "kafka-python")
    assert KafkaSettings().client == "kafka-python"
    monkeypatch.setenv("LIVEREC_KAFKA_CLIENT", "java")
    with pytest.raises(ValueError, match="confluent"):
        KafkaSettings()


def test_server_reads_the_documented_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 6: `liverec serve` used to read only LIVEREC_BOOTSTRAP."""
    monkeypatch.setenv("LIVEREC_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("LIVEREC_TOPIC", "events")
    s = ServeSettings()
    assert (s.bootstrap, s.topic) == ("k:9092", "events")
    assert ServeSettings(bootstrap="cli:1").kafka.topic == "events"
    assert ServeSettings(bootstrap="cli:1", topic="t").topic == "t"


def test_event_weights_are_read_by_the_shared_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 6: LIVEREC_EVENT_WEIGHTS reaches train and serve alike."""
    monkeypatch.setenv("LIVEREC_EVENT_WEIGHTS",
                       '{"view": 1, "click": 2, "add_to_cart": 3, "purchase": 10}')
    assert KafkaSettings().event_weights["purchase"] == 10
    assert ServeSettings().kafka.event_weights["purchase"] == 10


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-1"])
def test_event_weights_must_be_finite_and_not_negative(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("LIVEREC_EVENT_WEIGHTS",
                       f'{{"view": {bad}, "click": 2, "add_to_cart": 3, "purchase": 10}}')
    with pytest.raises(ValueError, match="finite and not negative"):
        KafkaSettings()


def test_secrets_come_from_files_and_stay_hidden(tmp_path, monkeypatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    monkeypatch.setenv("LIVEREC_KAFKA_SASL_PASSWORD", f"@{pw}")
    s = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u")
    assert s.sasl_password is not None and s.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(ServeSettings(kafka=s))
    with pytest.raises(ValueError, match="cannot read the secret file"):
        KafkaSettings(sasl_password=f"@{tmp_path / 'missing'}")


def test_limits_and_dlq_topic() -> None:
    s = KafkaSettings(topic="clicks", max_id_chars=4)
    assert s.dlq_topic == "clicks.dlq" and s.limits.max_id_chars == 4
    with pytest.raises(ValueError):
        KafkaSettings(dlq_max_bytes=10)


def test_security_fields_the_protocol_would_ignore_are_refused(monkeypatch) -> None:
    """SASL credentials under the PLAINTEXT default were dropped without a word, and the
    client connected without authenticating (likewise a CA file without TLS)."""
    monkeypatch.setenv("LIVEREC_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("LIVEREC_KAFKA_SASL_PASSWORD", "hunter2")
    with pytest.raises(ValueError, match="LIVEREC_KAFKA_SASL_USERNAME, LIVEREC_KAFKA_SASL_"
                                         "PASSWORD set, but the security protocol is "
                                         "PLAINTEXT") as err:
        KafkaSettings()
    assert "hunter2" not in str(err.value)
    assert KafkaSettings(security_protocol="SASL_SSL").sasl_username == "alice"
    monkeypatch.delenv("LIVEREC_KAFKA_SASL_USERNAME")
    monkeypatch.delenv("LIVEREC_KAFKA_SASL_PASSWORD")
    with pytest.raises(ValueError, match=r"LIVEREC_KAFKA_SSL_CAFILE set.*SASL_PLAINTEXT"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                      ssl_cafile="/ca.pem")
