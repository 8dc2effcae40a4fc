"""Kafka over SASL_SSL (issue 11 item 3): a local KRaft broker with a SASL_SSL listener.

The test makes a CA and a broker certificate with openssl (a PKCS#12 keystore for the
broker), creates SCRAM credentials when the storage is formatted, and shows that both
clients work with the right credentials and CA, and are refused with a wrong password,
without SASL, or with a CA that did not sign the broker's certificate.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.broker import LocalBroker, free_port
from stream.kafka import (
    cluster_ready,
    create_topics,
    deliver,
    make_consumer,
    make_producer,
)
from stream.settings import KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USER, PASSWORD = "liverec-trainer", "correct horse battery staple"
STORE_PASSWORD = "keystore-secret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> Path:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)
    return d / f"{name}.pem"


def _make_broker_keystore(d: Path, ca: str) -> Path:
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "broker.key", "-out", "broker.csr", cwd=d)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "broker.crt", cwd=d)
    _openssl("pkcs12", "-export", "-in", "broker.crt", "-inkey", "broker.key",
             "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{STORE_PASSWORD}",
             cwd=d)
    return d / "broker.p12"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """``(sasl_ssl bootstrap, CA file, a CA file that did not sign the broker)``."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's certificates")
    d = tmp_path_factory.mktemp("kafka-sasl")
    ca = _make_ca(d, "liverec-test-ca")
    other_ca = _make_ca(d, "some-other-ca")
    keystore = _make_broker_keystore(d, "liverec-test-ca")
    plain, controller, secure = free_port(), free_port(), free_port()
    while len({plain, controller, secure}) < 3:
        secure = free_port()
    broker = LocalBroker(
        d / "broker", port=plain, controller_port=controller,
        extra_config={
            "listeners": (f"PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller},"
                          f"SASL_SSL://127.0.0.1:{secure}"),
            "advertised.listeners": (f"PLAINTEXT://127.0.0.1:{plain},"
                                     f"SASL_SSL://127.0.0.1:{secure}"),
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"),
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.password": STORE_PASSWORD,
            "ssl.key.password": STORE_PASSWORD,
        },
        format_args=[f"--add-scram=SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
    )
    broker.start()
    try:
        yield f"127.0.0.1:{secure}", ca, other_ca
    finally:
        broker.stop()


def _settings(bootstrap: str, client: str, ca: Path, password_file: Path | None,
              protocol: str = "SASL_SSL") -> KafkaSettings:
    # Only the fields the protocol uses: others are refused as a misconfiguration.
    sasl: dict[str, Any] = dict(
        sasl_mechanism="SCRAM-SHA-512", sasl_username=USER,
        sasl_password=None if password_file is None else f"@{password_file}")
    return KafkaSettings(
        bootstrap=bootstrap, client=client, security_protocol=protocol,
        **(sasl if protocol.startswith("SASL") else {}),
        **({"ssl_cafile": ca} if protocol.endswith("SSL") else {}))


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_clients_connect_with_credentials_and_the_right_ca(secured, client, tmp_path):
    bootstrap, ca, _ = secured
    pw = tmp_path / "password"
    pw.write_text(PASSWORD + "\n")
    s = _settings(bootstrap, client, ca, pw)
    assert cluster_ready(s, timeout_ms=20_000)
    topic = f"sec-{uuid.uuid4().hex[:10]}"
    assert create_topics(s, {topic: 1}) == [topic]
    producer = make_producer(s)
    try:
        rec = deliver(producer, topic, b"secret click", key=b"u1")
    finally:
        producer.close()
    consumer = make_consumer(s, client_id="sec-reader")
    try:
        consumer.assign([(topic, rec.partition)])
        got = []
        for _ in range(40):
            got.extend(consumer.poll(10, 0.5))
            if got:
                break
        assert [r.value for r in got] == [b"secret click"]
    finally:
        consumer.close()
    # Replay and the mini-batch consumer take the same settings.
    from online_models.datasets import Dataset
    from stream.consumer import MiniBatchConsumer
    from stream.replay import replay_dataset

    ds = Dataset.from_records([{"user_id": f"u{i}", "item_id": "i1", "timestamp": 1.7e9 + i,
                                "event_type": "click"} for i in range(20)])
    clicks = s.model_copy(update={"topic": f"{topic}-clicks"})
    create_topics(s, {clicks.topic: 2, clicks.dlq_topic: 1})
    result = replay_dataset(ds, clicks, progress=False)
    assert (result.sent, result.failed) == (20, 0)
    with MiniBatchConsumer(clicks, "sec-group", batch_size=50) as c:
        learned: list[str] = []
        for _ in range(60):
            learned.extend(e.user_id for e in c.next_batch(timeout_ms=500).events)
            if len(learned) >= 20:
                break
    assert sorted(learned) == sorted(f"u{i}" for i in range(20))


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_clients_are_refused_without_credentials_or_with_a_wrong_ca(secured, client, tmp_path):
    bootstrap, ca, other_ca = secured
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password")
    right = tmp_path / "right"
    right.write_text(PASSWORD)
    refused = {
        "wrong password": _settings(bootstrap, client, ca, wrong),
        "no SASL (TLS only)": _settings(bootstrap, client, ca, None, protocol="SSL"),
        "no TLS, no SASL": _settings(bootstrap, client, ca, None, protocol="PLAINTEXT"),
        "a CA that did not sign the broker": _settings(bootstrap, client, other_ca, right),
    }
    for why, s in refused.items():
        assert not cluster_ready(s, timeout_ms=5_000), f"connected with {why}"


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_trainer_and_server_work_through_sasl_ssl(secured, client, tmp_path):
    """The whole path on the secured listener: replay -> trainer -> snapshot -> server,
    whose live tail reads the topic and whose POST /v1/events writes to it."""
    import time

    from online_models.datasets import Dataset
    from serving.app import create_app
    from serving.auth import AuthSettings
    from serving.settings import ServeSettings
    from stream.replay import replay_dataset
    from tests.serving.client import TestClient  # Host 127.0.0.1: a local caller
    from trainer import Trainer, TrainerSettings

    bootstrap, ca, _ = secured
    pw = tmp_path / "password"
    pw.write_text(PASSWORD)
    s = _settings(bootstrap, client, ca, pw).model_copy(
        update={"topic": f"sec-{uuid.uuid4().hex[:10]}"})
    create_topics(s, {s.topic: 2, s.dlq_topic: 1})
    ds = Dataset.from_records([{"user_id": f"u{i % 5}", "item_id": f"i{i % 7}",
                                "timestamp": 1.7e9 + i, "event_type": "click"}
                               for i in range(60)])
    assert replay_dataset(ds, s, progress=False).sent == 60
    snaps = tmp_path / "snaps"
    result = Trainer(TrainerSettings(snapshots=snaps, models="popularity", metrics_port=-1,
                                     group=f"g-{s.topic}", until_events_total=60,
                                     max_seconds=120), s).run()
    assert result.events_total == 60

    app = create_app(ServeSettings(snapshots=snaps, kafka=s),
                     auth=AuthSettings(allow_anonymous_writes=True))
    with TestClient(app) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and http.get("/readyz").status_code != 200:
            time.sleep(0.5)
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.json()
        r = http.post("/v1/events", json={"user_id": "sec-user", "item_id": "i3",
                                          "event_type": "click", "timestamp": time.time()})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline and not seen:
            seen = http.get("/v1/users/sec-user").json().get("live_items", [])
            time.sleep(0.3)
        assert seen == ["i3"]  # written through SASL_SSL, read back by the live tail
