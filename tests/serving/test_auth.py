"""API keys, scopes and rate limits against the real app (every status but the 202, which
needs Kafka and lives in test_write_kafka.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from online_models.snapshot import SnapshotStore
from serving.app import create_app
from serving.auth import (
    ApiKey,
    AuthConfigError,
    AuthSettings,
    KeyFile,
    hash_key,
    parse_limits,
    verify_key,
)
from serving.ratelimit import RateLimitSettings
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for

EVENT = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1_700_000_000}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    kf = KeyFile(tmp_path / "keys")
    made = {
        "writer": kf.add("writer", {"write"}),
        "reader": kf.add("reader", {"read"}),
        "ops": kf.add("ops", {"ops", "read"}),
    }
    return kf.path, made


def _client(store: SnapshotStore, auth: AuthSettings, **limits: Any) -> TestClient:
    app = create_app(settings_for(store.root), auth=auth, limits=RateLimitSettings(**limits))
    return TestClient(app)


@pytest.fixture
def secured(store: SnapshotStore, keys: tuple[Path, dict[str, str]]) -> Iterator[TestClient]:
    auth = AuthSettings(api_keys_file=keys[0], require_read_key=True, protect_ops=True)
    with _client(store, auth) as c:
        yield c


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_hash_is_salted_and_verifies_only_its_key() -> None:
    key = "lrk_0123abcd_" + "k" * 43
    a, b = hash_key(key), hash_key(key)
    assert a != b and key not in a  # salted: same key, different records
    assert verify_key(key, a) and verify_key(key, b)
    assert not verify_key(key[:-1] + "j", a)
    assert not verify_key(key, "scrypt$broken")


def test_missing_and_wrong_keys_get_401_json(
    secured: TestClient, keys: tuple[Path, dict[str, str]]
) -> None:
    made = keys[1]
    for path in ("/v1/recommendations?user_id=u", "/metrics", "/v1/model"):
        r = secured.get(path)
        assert r.status_code == 401, path
        assert r.json()["detail"]["reason"] == "missing_key"
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = secured.post("/v1/events", json=EVENT)
    assert r.status_code == 401 and r.json()["detail"]["reason"] == "missing_key"
    assert "scheme" not in r.json()["detail"]["detail"]
    # A key sent with another scheme is named as such (it read as no key at all).
    r = secured.post("/v1/events", json=EVENT,
                     headers={"Authorization": "Basic " + made["writer"]})
    assert r.status_code == 401 and r.json()["detail"]["reason"] == "missing_key"
    assert "scheme 'Basic' is not read" in r.json()["detail"]["detail"]
    assert made["writer"] not in r.text
    for value in (made["writer"], made["writer"][:30] + " x"):  # a key without a scheme
        r = secured.post("/v1/events", json=EVENT, headers={"Authorization": value})
        assert "without a scheme is not read" in r.json()["detail"]["detail"]
        assert made["writer"][:13] not in r.text  # not even its id
    wrong = made["writer"][:-3] + ("aaa" if not made["writer"].endswith("aaa") else "bbb")
    for headers in (_bearer(wrong), {"X-API-Key": wrong}, {"X-API-Key": "not-a-key"}):
        r = secured.post("/v1/events", json=EVENT, headers=headers)
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "unknown_key"
        assert wrong not in r.text
    reg = secured.app.state.serving.metrics.registry  # type: ignore[attr-defined]
    assert reg.get_sample_value("liverec_serving_auth_failures_total",
                                {"reason": "unknown_key"}) == 3.0


def test_right_key_wrong_scope_gets_403(
    secured: TestClient, keys: tuple[Path, dict[str, str]]
) -> None:
    made = keys[1]
    r = secured.post("/v1/events", json=EVENT, headers=_bearer(made["reader"]))
    assert r.status_code == 403 and r.json()["detail"]["reason"] == "wrong_scope"
    assert "reader" in r.text and made["reader"] not in r.text  # the name, never the key
    r = secured.get("/v1/recommendations", params={"user_id": "u"},
                    headers={"X-API-Key": made["writer"]})
    assert r.status_code == 403
    assert secured.get("/metrics", headers=_bearer(made["reader"])).status_code == 403


def test_right_keys_pass_and_never_leak(
    secured: TestClient, keys: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    made = keys[1]
    caplog.set_level(logging.DEBUG)
    r = secured.get("/v1/recommendations", params={"user_id": "u"},
                    headers=_bearer(made["reader"]))
    assert r.status_code == 200
    r = secured.get("/v1/recommendations", params={"user_id": "u"},
                    headers={"X-API-Key": made["reader"]})
    assert r.status_code == 200
    # A valid write key gets past auth; this app has no Kafka, so the answer is 503.
    r = secured.post("/v1/events", json=EVENT, headers=_bearer(made["writer"]))
    assert r.status_code == 503 and r.json()["reason"] == "no_producer"
    assert "retry-after" not in r.headers  # a server without Kafka: no retry does better
    metrics = secured.get("/metrics", headers=_bearer(made["ops"]))
    model = secured.get("/v1/model", headers=_bearer(made["ops"]))
    assert metrics.status_code == 200 and model.status_code == 200
    for key in made.values():
        secret = key.split("_", 2)[2]
        assert secret not in metrics.text and secret not in model.text
        assert secret not in caplog.text
    assert secured.get("/healthz").status_code == 200  # probes never need a key
    # With ops protected, the dependencies' details (paths, addresses, error texts)
    # are for an ops key; other callers get the status and what is degraded.
    for headers in ({}, _bearer(made["reader"]), {"X-API-Key": made["writer"][:-1] + "x"}):
        r = secured.get("/readyz", headers=headers)
        assert r.status_code == 200 and r.json()["status"] in ("ready", "degraded")
        assert "dependencies" not in r.json() and "degraded" in r.json()
    for headers in (_bearer(made["ops"]), {"X-API-Key": made["ops"]}):
        r = secured.get("/readyz", headers=headers)
        assert r.status_code == 200 and "snapshot" in r.json()["dependencies"]


def test_revoked_key_is_refused_without_restart(
    secured: TestClient, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    headers = _bearer(made["reader"])
    assert secured.get("/v1/recommendations", params={"user_id": "u"},
                       headers=headers).status_code == 200
    assert KeyFile(path).revoke("reader")
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.3)
        status = secured.get("/v1/recommendations", params={"user_id": "u"},
                             headers=headers).status_code
    assert status == 401


def _anonymous_write_once_keys_are(c: TestClient, want_keys: set[str]) -> int:
    """The status of an anonymous write once the server has re-read the key file to
    hold ``want_keys`` (key names); the server re-reads it at most once a second."""
    access = c.app.state.access  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while True:
        status = c.post("/v1/events", json=EVENT).status_code
        if {k.name for k in access.keys.values()} == want_keys or time.monotonic() > deadline:
            assert {k.name for k in access.keys.values()} == want_keys
            return status
        time.sleep(0.3)


def test_a_key_added_at_run_time_closes_anonymous_writes(
    store: SnapshotStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text("")  # an empty key file: on loopback, anonymous writes are open
    with _client(store, AuthSettings(api_keys_file=path)) as c:
        r = c.post("/v1/events", json=EVENT)
        assert r.status_code == 503 and r.json()["reason"] == "no_producer"  # past auth
        key = KeyFile(path).add("ingest", {"write"})  # what `liverec keys add` does
        assert _anonymous_write_once_keys_are(c, {"ingest"}) == 401  # no key presented
        r = c.post("/v1/events", json=EVENT)
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "missing_key"
        assert c.post("/v1/events", json=EVENT, headers=_bearer(key)).status_code == 503
        # Revoking every key does not reopen anonymous writes (they reopened to every
        # local process, while a vanished key file keeps them closed); the log says so.
        assert KeyFile(path).revoke("ingest")
        with caplog.at_level(logging.WARNING, logger="serving.auth"):
            assert _anonymous_write_once_keys_are(c, set()) == 401
        assert any(r.levelno == logging.WARNING and "stays closed to anonymous writes"
                   in r.getMessage() for r in caplog.records), caplog.text
    # With anonymous writes allowed explicitly, the last key's revocation reopens them.
    KeyFile(path).add("ingest", {"write"})
    caplog.clear()
    with _client(store, AuthSettings(api_keys_file=path,
                                     allow_anonymous_writes=True)) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 401
        assert KeyFile(path).revoke("ingest")
        with caplog.at_level(logging.WARNING, logger="serving.auth"):
            assert _anonymous_write_once_keys_are(c, set()) == 503
        assert "anonymous writes again" in caplog.text


def test_anonymous_writes_on_loopback_take_only_local_callers(store: SnapshotStore) -> None:
    """Behind a reverse proxy on this host, a loopback server took anonymous writes from
    anyone; a caller the proxy names as remote (X-Forwarded-For, believed from a
    trusted proxy) is refused."""
    auth: AuthSettings | str
    for auth, client, want in (
        (AuthSettings(), ("127.0.0.1", 5000), 503),  # past auth (no Kafka here)
        (AuthSettings(), ("203.0.113.9", 5000), 403),
        (AuthSettings(), ("::ffff:203.0.113.9", 5000), 403),
        (AuthSettings(allow_anonymous_writes=True), ("203.0.113.9", 5000), 503),
        # A trusted proxy may forward "unknown": remote (without one, a name is local)
        ("proxied", ("unknown", 0), 403),
        ("proxied", ("127.0.0.1", 0), 503),
    ):
        proxied = auth == "proxied"
        settings = settings_for(store.root, forwarded_allow_ips="127.0.0.1" if proxied else None)
        app = create_app(settings, auth=AuthSettings() if proxied else auth)
        with TestClient(app, client=client) as c:
            r = c.post("/v1/events", json=EVENT)
            assert r.status_code == want, (auth, client, r.text)
            if want == 403:
                assert r.json()["detail"]["reason"] == "remote_client"
                reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]
                assert reg.get_sample_value("liverec_serving_auth_failures_total",
                                            {"reason": "remote_client"}) == 1.0
            # Reads stay open to every caller.
            assert c.get("/v1/recommendations", params={"user_id": "u"}).status_code == 200


def test_trusting_every_proxy_is_warned_of(store: SnapshotStore,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        create_app(settings_for(store.root, forwarded_allow_ips="10.0.0.2, *"))
    assert "LIVEREC_FORWARDED_ALLOW_IPS=* believes" in caplog.text


def test_revoking_every_key_keeps_writes_closed_on_a_public_interface(
    store: SnapshotStore, tmp_path: Path
) -> None:
    kf = KeyFile(tmp_path / "keys")
    kf.add("ingest", {"write"})
    app = create_app(settings_for(store.root, host="0.0.0.0"),
                     auth=AuthSettings(api_keys_file=kf.path))
    with TestClient(app) as c:
        assert kf.revoke("ingest")
        assert _anonymous_write_once_keys_are(c, set()) == 401  # and nothing to warn of


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_vanished_key_file_revokes_its_keys_and_keeps_writes_closed(
    store: SnapshotStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A key file deleted or unmounted at run time reopened anonymous writes on a
    server that allowed them while no key existed (compose allows them by default)."""
    kf = KeyFile(tmp_path / "keys")
    key = kf.add("ingest", {"write"})
    app = create_app(settings_for(store.root, host=host),
                     auth=AuthSettings(api_keys_file=kf.path, allow_anonymous_writes=True))
    with TestClient(app) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 401
        kf.path.rename(tmp_path / "keys.bak")
        with caplog.at_level(logging.ERROR, logger="serving.auth"):
            assert _anonymous_write_once_keys_are(c, set()) == 401
        assert any("is gone" in r.getMessage() for r in caplog.records), caplog.text
        r = c.post("/v1/events", json=EVENT, headers=_bearer(key))
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "unknown_key"
        # Back damaged (an editor's half-written save): still closed.
        kf.path.write_text("garbage line\n")
        time.sleep(1.2)
        assert c.post("/v1/events", json=EVENT).status_code == 401
        kf.path.unlink()
        (tmp_path / "keys.bak").rename(kf.path)
        assert _anonymous_write_once_keys_are(c, {"ingest"}) == 401
        assert c.post("/v1/events", json=EVENT, headers=_bearer(key)).status_code == 503


def test_rate_limit_answers_429_with_retry_after(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    auth = AuthSettings(api_keys_file=path)
    with _client(store, auth, read_per_s=0.01, read_burst=3, write_per_s=0.01,
                 write_burst=5) as c:
        statuses = [c.get("/v1/recommendations", params={"user_id": "u"}).status_code
                    for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]  # anonymous reads: per address
        r = c.get("/v1/recommendations", params={"user_id": "u"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["detail"]["reason"] == "rate_limited"
        # A key has its own bucket, apart from the anonymous address's.
        r = c.get("/v1/recommendations", params={"user_id": "u"}, headers=_bearer(made["ops"]))
        assert r.status_code == 200
        # Writes cost one token per event: a batch of 5 empties the write bucket.
        batch = [{**EVENT, "event_id": f"e{i}"} for i in range(5)]
        r = c.post("/v1/events", json=batch, headers=_bearer(made["writer"]))
        assert r.status_code == 503  # got through the limiter; no Kafka here
        r = c.post("/v1/events", json=EVENT, headers=_bearer(made["writer"]))
        assert r.status_code == 429 and r.headers["retry-after"]
        reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("liverec_serving_rate_limited_total", {"scope": "read"}) == 3
        assert reg.get_sample_value("liverec_serving_rate_limited_total", {"scope": "write"}) == 1


def test_a_key_with_its_own_limits_is_held_to_them(
    store: SnapshotStore, tmp_path: Path
) -> None:
    """A key's own limits replace the server's for it alone; a rate of 0 lifts them;
    changed in the key file, they apply at the next request (no restart)."""
    kf = KeyFile(tmp_path / "keys")
    widget = kf.add("widget", {"write", "read"}, parse_limits("write=0.01/2"))
    backend = kf.add("backend", {"write"}, parse_limits("write=0/1"))
    plain = kf.add("plain", {"write"})
    with _client(store, AuthSettings(api_keys_file=kf.path), write_per_s=0.01,
                 write_burst=5, read_per_s=0.01, read_burst=2) as c:
        def post(key: str, n: int = 1) -> int:
            body = [{**EVENT, "event_id": f"e{i}"} for i in range(n)] if n > 1 else EVENT
            return c.post("/v1/events", json=body, headers=_bearer(key)).status_code

        # 503: past the limiter (no Kafka here)
        r = c.post("/v1/events", json=[EVENT, EVENT, EVENT], headers=_bearer(widget))
        assert r.status_code == 413 and "at most 2 events" in r.json()["detail"]
        assert [post(widget) for _ in range(2)] == [503, 429]  # the 413 took one token
        assert [post(plain) for _ in range(6)] == [503] * 5 + [429]  # the server's 5
        assert [post(backend, 100) for _ in range(20)] == [503] * 20  # rate 0: no limit
        # Its read scope keeps the server's limit (its record sets only writes).
        reads = [c.get("/v1/recommendations", params={"user_id": "u"},
                       headers=_bearer(widget)).status_code for _ in range(3)]
        assert reads == [200, 200, 429]
        # `liverec keys limit widget --limit write=0/1` while the server runs
        assert kf.set_limits("widget", parse_limits("write=0/1"))
        deadline = time.monotonic() + 10
        while post(widget) == 429:
            assert time.monotonic() < deadline, "the new limit never applied"
            time.sleep(0.3)
        assert [post(widget) for _ in range(10)] == [503] * 10
        # An operator sees who sent what and who was held back, by key name.
        reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]

        def by_key(metric: str, **labels: str) -> float:
            return reg.get_sample_value(metric, labels) or 0.0

        assert by_key("liverec_serving_key_events_total", key="backend",
                      outcome="refused") == 2000  # no Kafka here: every event refused
        assert by_key("liverec_serving_key_rate_limited_total", key="plain",
                      scope="write") == 1
        assert by_key("liverec_serving_key_rate_limited_total", key="widget",
                      scope="read") == 1
        assert by_key("liverec_serving_key_rate_limited_total", key="backend",
                      scope="write") == 0
        exposed = c.get("/metrics").text
        assert 'key="widget"' in exposed and widget not in exposed  # the name, never the key


def test_key_records_carry_their_limits(tmp_path: Path) -> None:
    rec = ApiKey("w", "0000000a", frozenset({"write"}), "scrypt$x",
                 parse_limits("write=2.5/10,ops=1/1"))
    assert rec.record() == "w:write:0000000a:scrypt$x:ops=1/1,write=2.5/10"
    assert ApiKey.parse(rec.record()) == rec
    assert rec.limit("write") == (2.5, 10.0) and rec.limit("read") is None
    assert ApiKey.parse("w:write:0000000a:scrypt$x").limits == ()  # older records
    # A hand-written comment may end a record's line in the key file.
    kf = KeyFile(tmp_path / "keys")
    kf.path.write_text(f"# keys\n{rec.record()}  # the shop's widget: 2.5/s\n")
    assert kf.load() == [rec]
    for bad, why in (("auth=1/1", "scope is one of"), ("write=1/0", "at least 1"),
                     ("write=-1/5", "at least 0"), ("write=nan/5", "finite"),
                     ("write=1/2,write=3/4", "two rate limits"), ("write=1", "scope=rate/burst")):
        with pytest.raises(AuthConfigError, match=why):
            ApiKey.parse(f"w:write:0000000a:scrypt$x:{bad}")


def test_a_batch_retried_after_retry_after_gets_through(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retry-After on a refused batch covers the whole batch again (the retry's own
    request token included): a client that waits that long passes. It used to cover
    the batch minus the token the retry spends first, so at 2 writes/s the retry was
    refused again (and at 1/s for ever). A batch above the burst can never pass: 413.

    The limiter reads a clock the test moves by hand: on the wall clock, half a second
    between two requests (a stall of a loaded machine) refilled a token and changed
    the figures asserted below."""
    path, made = keys
    writer = _bearer(made["writer"])
    batch = [{**EVENT, "event_id": f"e{i}"} for i in range(10)]
    with _client(store, AuthSettings(api_keys_file=path), write_per_s=2.0,
                 write_burst=20) as c:
        limiter = c.app.state.access.limiter  # type: ignore[attr-defined]
        check = limiter.check
        clock = [1000.0]

        def on_the_test_clock(*args: Any, now: float | None = None, **kw: Any) -> float:
            return float(check(*args, now=clock[0], **kw))

        monkeypatch.setattr(limiter, "check", on_the_test_clock)
        r = c.post("/v1/events", json=[{**EVENT, "event_id": f"f{i}"} for i in range(20)],
                   headers=writer)
        assert r.status_code == 503  # through the limiter (no Kafka here): bucket empty
        refusals = []
        for _ in range(4):
            r = c.post("/v1/events", json=batch, headers=writer)
            if r.status_code != 429:
                break
            refusals.append(int(r.headers["retry-after"]))
            clock[0] += refusals[-1]  # the client waits exactly Retry-After
        assert r.status_code == 503, refusals  # through the limiter
        # the key check's token (1 s), then the batch's ceil((10 - 1) / 2) = 5 s
        assert refusals == [1, 5]
        big = [{**EVENT, "event_id": f"g{i}"} for i in range(21)]
        r = c.post("/v1/events", json=big, headers=writer)
        assert r.status_code == 413 and r.json()["reason"] == "too_large"
        assert "at most 20 events" in r.json()["detail"]


def test_body_over_limit_is_413_before_parsing(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    app = create_app(settings_for(store.root, max_body_bytes=1024, max_batch_events=3),
                     auth=AuthSettings(api_keys_file=path))
    h = {**_bearer(made["writer"]), "content-type": "application/json"}
    with TestClient(app) as c:
        # Not even JSON: refused for its size, so it was never parsed.
        r = c.post("/v1/events", content=b"{" * 2000, headers=h)
        assert r.status_code == 413 and r.json()["reason"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b"[" * 200

        r = c.post("/v1/events", content=chunks(), headers=h)
        assert r.status_code == 413
        r = c.post("/v1/events", json=[EVENT] * 4, headers=_bearer(made["writer"]))
        assert r.status_code == 413 and "3 events" in r.json()["detail"]
        # Auth comes first: without a key a huge body is a 401, not read at all.
        r = c.post("/v1/events", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 401


def test_batch_with_one_bad_event_is_refused_whole(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    with _client(store, AuthSettings(api_keys_file=path)) as c:
        batch = [EVENT, {**EVENT, "user_id": "nul\x00"}, {**EVENT, "event_type": "buy"}]
        r = c.post("/v1/events", json=batch, headers=_bearer(made["writer"]))
        body = r.json()
        assert r.status_code == 422 and body["reason"] == "bad_id"
        assert [(e["index"], e["reason"]) for e in body["errors"]] == [
            (1, "bad_id"), (2, "bad_event_type")]


def test_refuses_anonymous_writes_on_a_public_interface(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    public = settings_for(store.root, host="0.0.0.0")
    with pytest.raises(AuthConfigError, match="--allow-anonymous-writes"):
        create_app(public, auth=AuthSettings())
    create_app(public, auth=AuthSettings(allow_anonymous_writes=True))
    create_app(public, auth=AuthSettings(api_keys_file=keys[0]))
    with pytest.raises(AuthConfigError, match="at least one API key"):
        create_app(settings_for(store.root), auth=AuthSettings(require_read_key=True))


def test_keys_from_the_environment_variable(store: SnapshotStore, tmp_path: Path) -> None:
    kf = KeyFile(tmp_path / "k")
    key = kf.add("envkey", {"read"})
    records = kf.path.read_text()
    auth = AuthSettings(api_keys=records, require_read_key=True)
    with _client(store, auth) as c:
        ok = c.get("/v1/recommendations", params={"user_id": "u"}, headers=_bearer(key))
        assert ok.status_code == 200
        assert c.get("/v1/recommendations", params={"user_id": "u"}).status_code == 401


def test_a_key_name_is_unique_across_the_variable_and_the_file(
    store: SnapshotStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A key's name scopes its event ids: two keys under one name would share them.
    env_file = KeyFile(tmp_path / "env")
    env_key = env_file.add("ingest", {"write"})
    env_records = env_file.path.read_text()
    kf = KeyFile(tmp_path / "keys")
    kf.add("ingest", {"write"})
    with pytest.raises(AuthConfigError, match="two API keys are named 'ingest'"):
        create_app(settings_for(store.root),
                   auth=AuthSettings(api_keys=env_records, api_keys_file=kf.path))
    # The same record in both places is one key.
    same = AuthSettings(api_keys=env_records, api_keys_file=env_file.path)
    with _client(store, same) as c:
        assert len(c.app.state.access.keys) == 1  # type: ignore[attr-defined]
    # At run time a clashing name is refused too, and the previous keys stay.
    other = KeyFile(tmp_path / "other")
    other.add("reader", {"read"})
    auth = AuthSettings(api_keys=env_records, api_keys_file=other.path)
    with _client(store, auth) as c:
        access = c.app.state.access  # type: ignore[attr-defined]
        before = dict(access.keys)
        assert {k.name for k in before.values()} == {"ingest", "reader"}
        other.add("ingest", {"write", "read"})
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.ERROR, logger="serving.auth"):
            while "two API keys are named 'ingest'" not in caplog.text:
                assert time.monotonic() < deadline, "the clash was never logged"
                c.get("/healthz")
                c.post("/v1/events", json=EVENT, headers=_bearer(env_key))
                time.sleep(0.3)
        assert access.keys == before


def test_keys_cli_add_list_revoke(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liverec.cli import app

    runner = CliRunner()
    path = str(tmp_path / "keys")
    added = runner.invoke(app, ["keys", "add", "ingest", "--scope", "write", "--file", path])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[0]
    assert key.startswith("lrk_")
    stored = Path(path).read_text()
    assert key not in stored and key.split("_", 2)[2] not in stored  # only the hash
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    listed = runner.invoke(app, ["keys", "list", "--file", path])
    assert "ingest" in listed.stdout and "scopes=write" in listed.stdout
    assert key not in listed.output
    dup = runner.invoke(app, ["keys", "add", "ingest", "--file", path])
    assert dup.exit_code == 1
    assert runner.invoke(app, ["keys", "add", "x", "--scope", "admin", "--file", path]
                         ).exit_code != 0
    limited = runner.invoke(app, ["keys", "limit", "ingest", "--limit", "write=50/200",
                                  "--file", path])
    assert limited.exit_code == 0, limited.output
    assert KeyFile(Path(path)).load()[0].limit("write") == (50.0, 200.0)
    assert "limits=write=50/200" in runner.invoke(app, ["keys", "list", "--file", path]).stdout
    bad = runner.invoke(app, ["keys", "limit", "ingest", "--limit", "write=50", "--file", path])
    assert bad.exit_code == 2 and "scope=rate/burst" in bad.output
    assert runner.invoke(app, ["keys", "limit", "nobody", "--file", path]).exit_code == 1
    assert runner.invoke(app, ["keys", "limit", "ingest", "--file", path]).exit_code == 0
    assert KeyFile(Path(path)).load()[0].limits == ()  # the server's again
    revoked = runner.invoke(app, ["keys", "revoke", "ingest", "--file", path])
    assert revoked.exit_code == 0 and "keeps anonymous writes closed" in revoked.output
    assert runner.invoke(app, ["keys", "revoke", "ingest", "--file", path]).exit_code == 1
    assert KeyFile(Path(path)).load() == []


def test_key_guessing_is_rate_limited_per_address(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    with _client(store, AuthSettings(api_keys_file=path), auth_per_s=0.01, auth_burst=3) as c:
        guess = made["writer"][:-4] + "abcd"
        statuses = [c.post("/v1/events", json=EVENT, headers=_bearer(guess)).status_code
                    for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("liverec_serving_rate_limited_total", {"scope": "auth"}) == 2


def test_a_refused_batch_costs_its_request_not_its_events(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys
    with _client(store, AuthSettings(api_keys_file=path), write_per_s=0.01,
                 write_burst=5) as c:
        typo = [{**EVENT, "event_id": f"e{i}", "event_type": "clik"} for i in range(20)]
        r = c.post("/v1/events", json=typo, headers=_bearer(made["writer"]))
        assert r.status_code == 422 and r.json()["reason"] == "bad_event_type"
        r = c.post("/v1/events", json=EVENT, headers=_bearer(made["writer"]))
        assert r.status_code == 503, r.text  # past the limiter; no Kafka here


def test_unknown_key_ids_do_not_use_up_the_allowance_a_real_key_needs(
    store: SnapshotStore, keys: tuple[Path, dict[str, str]]
) -> None:
    """A junk key costs no scrypt: refused without an auth token, so junk sent from a
    shared address (NAT, a Docker gateway) cannot lock the real keys out."""
    path, made = keys
    with _client(store, AuthSettings(api_keys_file=path), auth_per_s=0.01, auth_burst=3) as c:
        junk = ["x", "lrk_ffffffff_" + "a" * 43, "lrk_0000_short"]
        statuses = [c.post("/v1/events", json=EVENT, headers=_bearer(k)).status_code
                    for k in junk * 4]
        assert statuses == [401] * 12
        first_use = c.post("/v1/events", json=EVENT, headers=_bearer(made["writer"]))
        assert first_use.status_code == 503  # past auth and its limit; no Kafka here


def test_anonymous_writes_take_only_names_that_cannot_be_rebound(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch,
    keys: tuple[Path, dict[str, str]],
) -> None:
    """DNS rebinding: a page whose name now resolves to this server is same-origin to
    the browser and posts without a preflight, but its Host is still its own name."""
    with _client(store, AuthSettings()) as c:
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.1",
                     "LocalHost.:8000", "[::ffff:127.0.0.1]:8000", "10.0.0.5:8000"):
            r = c.post("/v1/events", json=EVENT, headers={"Host": host})
            assert r.status_code == 503, (host, r.text)  # past auth; no Kafka here
        for host in ("rebind.attacker.example:8000", "127.0.0.1.nip.io", "localhost.evil",
                     ""):
            r = c.post("/v1/events", json=EVENT, headers={"Host": host})
            assert r.status_code == 403, (host, r.text)
            assert r.json()["detail"]["reason"] == "foreign_host"
        # Reads stay open to any name.
        r = c.get("/v1/users/u", headers={"Host": "rebind.attacker.example"})
        assert r.status_code == 200
    # Anonymous writes opened on purpose (the compose stack's, published on the host's
    # loopback) are guarded the same way; a name the operator lists is taken.
    with _client(store, AuthSettings(allow_anonymous_writes=True)) as c:
        r = c.post("/v1/events", json=EVENT, headers={"Host": "rebind.attacker.example"})
        assert r.status_code == 403, r.text
        r = c.post("/v1/events", json=EVENT, headers={"Host": "serving:8000"})
        assert r.status_code == 403, r.text
    monkeypatch.setenv("LIVEREC_ANONYMOUS_WRITE_HOSTS", "serving, Shop.Example.")
    listed = AuthSettings(allow_anonymous_writes=True)
    assert listed.anonymous_write_hosts == ("serving", "shop.example")
    with _client(store, listed) as c:
        for host in ("serving:8000", "shop.example"):
            r = c.post("/v1/events", json=EVENT, headers={"Host": host})
            assert r.status_code == 503, (host, r.text)
    # A key writes through any name.
    path, made = keys
    with _client(store, AuthSettings(api_keys_file=path)) as c:
        r = c.post("/v1/events", json=EVENT, headers={
            "Host": "shop.example.com", **_bearer(made["writer"])})
        assert r.status_code == 503, r.text


def test_the_name_anonymous_is_reserved(tmp_path: Path) -> None:
    """Callers without a key write event ids scoped under "anonymous"; a key of that
    name would share their ids (and the trainer's de-duplication of them)."""
    with pytest.raises(AuthConfigError, match="reserved"):
        KeyFile(tmp_path / "keys").add("anonymous", {"write"})


def test_the_key_file_is_owner_only_from_its_first_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    # No chmod afterwards to save it: the file must be created owner-only.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    old = os.umask(0o022)
    try:
        kf = KeyFile(tmp_path / "new-dir" / "keys")
        kf.add("writer", {"write"})
        # A leftover temporary file of a crashed write, readable by all, is replaced.
        tmp = kf.path.with_name("keys.tmp")
        tmp.write_text("stale")  # 0644 under this umask
        kf.add("reader", {"read"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(kf.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(kf.path.parent.stat().st_mode) == 0o700
    assert not tmp.exists()
    assert [k.name for k in kf.load()] == ["writer", "reader"]


def test_anonymous_rate_limits_hold_per_ipv6_64_and_per_ipv4_address(
    store: SnapshotStore,
) -> None:
    app = create_app(settings_for(store.root), auth=AuthSettings(),
                     limits=RateLimitSettings(read_per_s=0.001, read_burst=2))

    def reads(host: str, n: int) -> list[int]:
        c = TestClient(app, client=(host, 50000))
        return [c.get("/v1/users/u").status_code for _ in range(n)]

    with TestClient(app):  # runs the lifespan (loads the snapshot) for the others
        assert reads("2001:db8:0:1::1", 2) == [200, 200]
        # Other addresses of the same /64 draw on the same, now empty, bucket.
        assert reads("2001:db8:0:1::2", 1) == reads("2001:db8:0:1:ffff::9", 1) == [429]
        assert reads("2001:db8:0:2::1", 3) == [200, 200, 429]  # another /64
        assert reads("198.51.100.1", 3) == [200, 200, 429]  # IPv4: per address
        assert reads("198.51.100.2", 3) == [200, 200, 429]
        assert reads("::ffff:198.51.100.2", 1) == [429]  # IPv4-mapped: the IPv4 address
        assert reads("testclient", 3) == [200, 200, 429]  # not an IP: the name itself


def test_serve_refuses_to_start_open_on_a_public_interface(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    out = subprocess.run(
        [sys.executable, "-m", "liverec.cli", "serve", "--snapshots", str(tmp_path),
         "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 2
    assert "--allow-anonymous-writes" in out.stderr and "liverec keys add" in out.stderr
