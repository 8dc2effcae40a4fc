"""HTTP behaviour on a small real snapshot (TestClient runs the app's lifespan)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from online_models.base import OnlineModel, UserHistory
from online_models.snapshot import SnapshotStore
from serving.app import create_app
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for

Trained = tuple[dict[str, OnlineModel], UserHistory, float]


def _user_with_history(history: UserHistory) -> tuple[str, list[str]]:
    for user in list(history._items):
        items = history.get(user)
        if len(items) >= 3:
            return user, items
    raise AssertionError("fixture has no user with 3+ items")


def test_recommendations_exclude_seen_and_report_snapshot(
    client: TestClient, trained: Trained
) -> None:
    models, history, watermark = trained
    user, seen = _user_with_history(history)
    r = client.get("/v1/recommendations", params={"user_id": user, "k": 7, "model": "bpr"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "bpr" and body["fallback"] is False
    assert body["served_by"] == "bpr"
    assert body["snapshot_version"] == 1 and body["watermark"] == watermark
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 7 and len(set(ids)) == 7
    assert not set(ids) & set(seen)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # Same ranking as the model itself, given the same history and exclusions.
    expected = models["bpr"].recommend(user, 7, history=seen, exclude=seen)
    assert ids == [i for i, _ in expected]

    kept = client.get(
        "/v1/recommendations", params={"user_id": user, "k": 150, "exclude_seen": "false"}
    ).json()
    assert set(seen) <= {it["item_id"] for it in kept["items"]}


@pytest.mark.parametrize(
    "overrides",
    [{"rank_threads": 0}, {"ann": True, "ann_min_items": 0}],
    ids=["inline-on-the-loop", "hnsw-index"],
)
def test_every_ranking_configuration_serves_the_model_ranking(
    store: SnapshotStore, trained: Trained, overrides: dict[str, Any]
) -> None:
    models, history, _ = trained
    user, seen = _user_with_history(history)
    expected = [i for i, _ in models["bpr"].recommend(user, 7, history=seen, exclude=seen)]
    with TestClient(create_app(settings_for(store.root, **overrides))) as c:
        body = c.get("/v1/recommendations", params={"user_id": user, "k": 7, "model": "bpr"}).json()
    # A catalogue this small is inside one HNSW search breadth, so even ANN is exact.
    assert [it["item_id"] for it in body["items"]] == expected


def test_default_model_falls_back_to_one_in_the_snapshot(client: TestClient) -> None:
    body = client.get("/v1/recommendations", params={"user_id": "u000001"}).json()
    # No hybrid in this snapshot: the next preferred model answers.
    assert body["model"] == "bpr"
    assert len(body["items"]) == 10


def test_unknown_user_gets_popular_items(client: TestClient, trained: Trained) -> None:
    models = trained[0]
    body = client.get("/v1/recommendations", params={"user_id": "nobody-ever", "k": 5}).json()
    assert body["fallback"] is True
    # The answer says what ranked it, and its time is not the model's latency.
    assert body["model"] == "bpr" and body["served_by"] == "live_popularity"
    metrics = client.get("/metrics").text
    assert 'liverec_serving_rank_duration_seconds_count{model="live_popularity"} 1.0' \
        in metrics
    assert 'liverec_serving_rank_duration_seconds_count{model="bpr"}' not in metrics
    popular = [i for i, _ in models["popularity"].recommend("nobody-ever", 5)]
    assert [it["item_id"] for it in body["items"]] == popular


def test_similar_items(client: TestClient, trained: Trained) -> None:
    models = trained[0]
    item = models["itemknn"].items.ids[0]
    body = client.get(f"/v1/items/{item}/similar", params={"k": 5, "model": "itemknn"}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert ids and item not in ids and body["model"] == "itemknn"
    assert ids == [i for i, _ in models["itemknn"].similar(str(item), 5)]
    assert client.get("/v1/items/no-such-item/similar").status_code == 404


def test_item_and_user_views(client: TestClient, trained: Trained) -> None:
    models, history, _ = trained
    item = models["popularity"].items.ids[0]
    body = client.get(f"/v1/items/{item}").json()
    assert body["in_snapshot"] is True and body["popularity"] > 0
    user, seen = _user_with_history(history)
    u = client.get(f"/v1/users/{user}").json()
    assert u["snapshot_items"] == seen and u["live_items"] == []
    assert u["in_snapshot"] is True
    # A user never seen says so, rather than looking like one with no clicks.
    nobody = client.get("/v1/users/nobody-ever").json()
    assert nobody["in_snapshot"] is False and nobody["snapshot_items"] == []


def test_ids_with_a_slash_use_the_query_forms(client: TestClient, trained: Trained) -> None:
    state = client.app.state.serving  # type: ignore[attr-defined]
    state.live.observe("u/1", "sku/12")
    state.content.update({"sku/12": "red wooden toy train", "sku/13": "red wooden toy train car"})
    item = client.get("/v1/items", params={"item_id": "sku/12"}).json()
    assert item["item_id"] == "sku/12" and item["popularity"] > 0
    user = client.get("/v1/users", params={"user_id": "u/1"}).json()
    assert user["user_id"] == "u/1" and user["live_items"] == ["sku/12"]
    for params in ({}, {"model": "content"}):  # bpr does not know it: content answers
        sim = client.get("/v1/items/similar", params={"item_id": "sku/12", **params}).json()
        assert sim["item_id"] == "sku/12" and sim["model"] == "content"
        assert [e["item_id"] for e in sim["items"]] == ["sku/13"]
    # The path forms cannot carry such an id: refused, never answered for another id.
    known = str(trained[0]["bpr"].items.ids[7])
    assert client.get(f"/v1/items/{known}/similar").status_code == 200
    user = str(trained[0]["bpr"].users.ids[0])
    for path in (f"/v1/items/{known}%2Fsimilar", f"/v1/items/{known}%2fsimilar",
                 "/v1/items/sku%2F12", "/v1/users/u%2F1", "/v1/items/sku%2F12/similar",
                 f"/v1/items/{known}%2F", f"/v1/users/{user}%2F"):  # not redirected
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 404, path
        assert r.json()["detail"]["reason"] == "slash_in_path", path
        assert "sku/13" not in r.text and "snapshot_version" not in r.text
    # Bytes that are not UTF-8 would decode to U+FFFD: one id for many inputs.
    for path in ("/v1/items/%FF", "/v1/users/a%C3", "/v1/items/similar?item_id=%FF",
                 "/v1/recommendations?user_id=%E2%82"):
        r = client.get(path)
        assert r.status_code == 400, path
        assert r.json()["detail"]["reason"] == "bad_encoding", path
    assert client.get("/v1/recommendations?user_id=%C3%A9").status_code != 400  # é


def test_the_literal_similar_route_wins_over_an_item_id(
    client: TestClient, trained: Trained
) -> None:
    item = str(trained[0]["itemknn"].items.ids[0])
    by_query = client.get("/v1/items/similar", params={"item_id": item, "model": "itemknn"})
    by_path = client.get(f"/v1/items/{item}/similar", params={"model": "itemknn"})
    assert by_query.status_code == 200 and by_query.json() == by_path.json()
    assert client.get("/v1/items/similar").status_code == 422  # item_id is required
    # An item named "similar" is still addressable.
    client.app.state.serving.live.observe("u", "similar")  # type: ignore[attr-defined]
    pop = client.get("/v1/items", params={"item_id": "similar"}).json()
    assert pop["item_id"] == "similar" and pop["popularity"] > 0
    unknown = client.get("/v1/items/similar/similar").json()["detail"]
    assert unknown["reason"] == "unknown_item", unknown
    assert unknown["detail"].startswith("item not known")


def test_live_context_is_excluded_and_used(client: TestClient, trained: Trained) -> None:
    models, history, _ = trained
    user, _seen = _user_with_history(history)
    first = client.get("/v1/recommendations", params={"user_id": user, "model": "bpr"}).json()
    top = first["items"][0]["item_id"]
    state = client.app.state.serving  # type: ignore[attr-defined]
    state.live.observe(user, top)
    after = client.get("/v1/recommendations", params={"user_id": user, "model": "bpr"}).json()
    assert top not in [it["item_id"] for it in after["items"]]
    # A brand-new user with one live click is personalised, not a fallback.
    state.live.observe("new-user", models["bpr"].items.ids[3])
    fresh = client.get("/v1/recommendations", params={"user_id": "new-user"}).json()
    assert fresh["fallback"] is False
    assert models["bpr"].items.ids[3] not in [it["item_id"] for it in fresh["items"]]
    # A brand-new item's live clicks show up in its popularity ...
    for who in ("a", "b", "c"):
        state.live.observe(who, "brand-new-item")
    pop = client.get("/v1/items/brand-new-item").json()
    assert pop["in_snapshot"] is False and 2.9 < pop["popularity"] <= 3.0
    # ... but one caller repeating clicks (or an event id) does not push it further.
    for _ in range(50):
        state.live.observe("a", "brand-new-item")
    assert state.live.observe("b", "brand-new-item", 5.0, event_id="k/1") is True
    assert state.live.observe("b", "brand-new-item", 5.0, event_id="k/1") is False
    pop = client.get("/v1/items/brand-new-item").json()
    assert pop["popularity"] <= 7.0  # a, c: 1 each; b: its strongest event, 5


def test_model_summary_health_and_readiness(client: TestClient) -> None:
    m = client.get("/v1/model").json()
    assert m["version"] == 1 and set(m["models"]) == {"popularity", "bpr", "itemknn"}
    assert m["models"]["bpr"]["n_items"] == 150
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    assert client.get("/docs").status_code == 200


def test_not_ready_without_snapshot(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path / "empty"))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.get("/healthz").status_code == 200
        # Every route that reads the snapshot: the documented 503, in the error shape,
        # with a time to come back.
        for path in ("/v1/recommendations?user_id=u", "/v1/items/i", "/v1/users/u",
                     "/v1/items/i/similar", "/v1/model"):
            r = c.get(path)
            assert r.status_code == 503, (path, r.status_code)
            assert r.json()["detail"]["reason"] == "no_snapshot", r.json()
            assert int(r.headers["retry-after"]) >= 1
            assert "503" in c.app.openapi()["paths"][path.split("?")[0]
                                                     .replace("/i/", "/{item_id}/")
                                                     .replace("/items/i", "/items/{item_id}")
                                                     .replace("/users/u", "/users/{user_id}")
                                                     ]["get"]["responses"]


def test_metrics_use_route_templates_never_ids(client: TestClient, trained: Trained) -> None:
    item = trained[0]["bpr"].items.ids[0]
    client.get("/v1/recommendations", params={"user_id": "secret-user-id"})
    client.get(f"/v1/items/{item}/similar")
    client.get("/v1/recommendations", params={"k": 0, "user_id": "x"})
    text = client.get("/metrics").text
    assert "secret-user-id" not in text and f'"{item}"' not in text
    reg = client.app.state.serving.metrics.registry  # type: ignore[attr-defined]
    ok = {"route": "/v1/recommendations", "method": "GET", "status": "200"}
    assert reg.get_sample_value("liverec_serving_responses_total", ok) == 1.0
    bad = {**ok, "status": "422"}
    assert reg.get_sample_value("liverec_serving_responses_total", bad) == 1.0
    sim = {"route": "/v1/items/{item_id}/similar", "method": "GET"}
    assert reg.get_sample_value("liverec_serving_request_duration_seconds_count", sim) == 1.0
    assert reg.get_sample_value("liverec_serving_snapshot_version") == 1.0
    assert reg.get_sample_value("liverec_serving_freshness_seconds") > 0
    assert reg.get_sample_value("liverec_serving_snapshot_age_seconds") >= 0


def test_url_limit_answers_414_and_it_is_counted(store: SnapshotStore) -> None:
    with TestClient(create_app(settings_for(store.root, max_url_bytes=256))) as c:
        r = c.get("/v1/recommendations", params={"user_id": "x" * 300})
        assert r.status_code == 414 and r.json()["detail"]["reason"] == "uri_too_long"
        reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]
        # Answered before routing: the bounded "unmatched" route, never the URL.
        labels = {"route": "unmatched", "method": "GET", "status": "414"}
        assert reg.get_sample_value("liverec_serving_responses_total", labels) == 1.0
        assert "x" * 300 not in c.get("/metrics").text


def test_security_headers(store: SnapshotStore) -> None:
    with TestClient(create_app(settings_for(store.root, max_url_bytes=256))) as c:
        for path in ("/dashboard", "/static/dashboard.js", "/v1/recommendations?user_id=u",
                     "/docs", "/healthz", "/v1/items/x?" + "q" * 300):
            h = c.get(path).headers
            assert h["x-content-type-options"] == "nosniff", path
            assert h["referrer-policy"] == "no-referrer", path
        page = c.get("/dashboard").headers
        assert page["x-frame-options"] == "DENY"
        csp = page["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        api = c.get("/v1/recommendations", params={"user_id": "u"})
        assert api.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'")
        # Personal and live answers: no shared cache may keep them for another caller.
        for path in ("/v1/recommendations?user_id=u", "/v1/users/u", "/readyz", "/metrics"):
            assert c.get(path).headers["cache-control"] == "no-store", path
        refused = c.get("/v1/items/x", params={"q": "q" * 300})  # the URL limit's own 414
        assert refused.status_code == 414 and "content-security-policy" in refused.headers
        # Swagger UI loads its script inline and from a CDN: a policy would break /docs.
        assert "content-security-policy" not in c.get("/docs").headers
    # Outside Starlette's error middleware and CORS: an unhandled 500 and a preflight.
    app = create_app(settings_for(store.root, cors_origins="https://shop.example.com"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        crashed = c.get("/boom")
        assert crashed.status_code == 500
        assert crashed.headers["x-content-type-options"] == "nosniff"
        preflight = c.options("/v1/events", headers={
            "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        assert preflight.headers["x-content-type-options"] == "nosniff"


def test_an_unhandled_error_is_a_json_500_a_page_can_read(store: SnapshotStore) -> None:
    shop = "https://shop.example.com"
    app = create_app(settings_for(store.root, cors_origins=shop))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug at /srv/secret/path")

    with TestClient(app, raise_server_exceptions=False) as c:
        crashed = c.get("/boom", headers={"Origin": shop, "X-Request-ID": "trace-9"})
        assert crashed.status_code == 500
        assert crashed.headers["content-type"] == "application/json"
        assert crashed.json()["detail"]["reason"] == "internal_error"
        assert "trace-9" in crashed.json()["detail"]["detail"]  # where the log has it
        assert "secret" not in crashed.text and "RuntimeError" not in crashed.text
        # inside CORS: the page reads the status and the id
        assert crashed.headers["access-control-allow-origin"] == shop
        assert "x-request-id" in crashed.headers["access-control-expose-headers"].lower()
        assert crashed.headers["x-request-id"] == "trace-9"
        reg = c.app.state.serving.metrics.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("liverec_serving_responses_total", {
            "route": "/boom", "method": "GET", "status": "500"}) == 1.0
    with TestClient(app) as c, pytest.raises(RuntimeError, match="a bug"):
        c.get("/boom")  # raised on after the answer: the server logs it, tests see it


def test_cors_is_off_by_default_and_allows_only_the_named_origins(
    store: SnapshotStore
) -> None:
    shop, other = "https://shop.example.com", "https://evil.example.net"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key, content-type, x-request-id"}
    with TestClient(create_app(settings_for(store.root))) as c:
        r = c.get("/v1/recommendations", params={"user_id": "u"}, headers={"Origin": shop})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(settings_for(store.root, cors_origins=shop))) as c:
        r = c.get("/v1/recommendations", params={"user_id": "u"}, headers={"Origin": shop})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == shop
        # a page may send its own request id and read the answer's
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        ok = c.options("/v1/events", headers={"Origin": shop, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == shop
        allowed = ok.headers["access-control-allow-headers"].lower()
        assert "x-api-key" in allowed and "authorization" in allowed
        assert "x-request-id" in allowed
        assert "access-control-allow-credentials" not in ok.headers  # keys, not cookies
        bad = c.options("/v1/events", headers={"Origin": other, **preflight})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        assert bad.headers["content-type"] == "application/json"
        assert bad.json()["detail"]["reason"] == "cors_refused"
        assert "Disallowed CORS origin" in bad.json()["detail"]["detail"]
        no_delete = c.options("/v1/events", headers={
            "Origin": shop, "Access-Control-Request-Method": "DELETE"})
        assert no_delete.status_code == 400
        assert no_delete.json()["detail"]["reason"] == "cors_refused"
        r = c.get("/v1/recommendations", params={"user_id": "u"}, headers={"Origin": other})
        assert "access-control-allow-origin" not in r.headers
    # Stored as a browser sends it (compared as strings); only scheme://host[:port].
    assert settings_for(store.root, cors_origins="HTTPS://Shop.Example.com:443, *"
                        ).cors_origins == ("https://shop.example.com", "*")
    for bad_origin in ("shop.example.com", "https://a.com/path", "https://a.com?x",
                       "https://u@a.com", "ftp://a.com", "https://a.com:99999"):
        with pytest.raises(ValueError, match="scheme://host"):
            settings_for(store.root, cors_origins=bad_origin)


def test_bad_input_gets_4xx_with_a_json_reason(client: TestClient) -> None:
    cases = [
        ("/v1/recommendations", {}),
        ("/v1/recommendations", {"user_id": ""}),
        ("/v1/recommendations", {"user_id": "u", "k": 0}),
        ("/v1/recommendations", {"user_id": "u", "k": 1001}),
        ("/v1/recommendations", {"user_id": "u", "k": "ten"}),
        ("/v1/recommendations", {"user_id": "u", "exclude_seen": "maybe"}),
        ("/v1/recommendations", {"user_id": "x" * 257}),
        ("/v1/items/" + "x" * 300 + "/similar", {}),
        ("/v1/items/i/similar", {"k": -1}),
    ]
    for path, params in cases:
        r = client.get(path, params=params)
        assert r.status_code == 422, (path, params, r.status_code)
        assert r.json()["detail"]
    r = client.get("/v1/recommendations", params={"user_id": "u", "model": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]["detail"]
    assert r.json()["detail"]["reason"] == "unknown_model"
    r = client.get("/v1/items/i/similar", params={"model": "nope"})
    assert r.status_code == 404 and r.json()["detail"]["reason"] == "unknown_model"
    # Routing's own refusals have the same shape (they were {"detail": "Not Found"}).
    for path in ("/v2/recommendations", "/static/nope.css", "/v1/items/a/b/c"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["detail"]["reason"] == "no_route", path
    # A trailing slash is not redirected (the Location was http:// from the Host
    # header: mixed content behind TLS): no such route.
    for method, path in (("GET", "/v1/recommendations/?user_id=u"), ("GET", "/v1/items/i/"),
                         ("GET", "/v1/items/i/similar/"), ("GET", "/healthz/"),
                         ("POST", "/v1/events/")):
        r = client.request(method, path, follow_redirects=False)
        assert r.status_code == 404, (path, r.status_code)
        assert "location" not in r.headers
        assert r.json()["detail"]["reason"] == "no_route", path
    r = client.delete("/v1/recommendations", params={"user_id": "u"})
    assert r.status_code == 405 and r.json()["detail"]["reason"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


def test_a_k_above_the_servers_max_k_is_refused_like_any_invalid_query(
        store: SnapshotStore) -> None:
    """The schema's bound on k is 1000; a server configured lower refuses in the same
    422 shape (a list of errors, as FastAPI's own), not a bare string."""
    with TestClient(create_app(settings_for(store.root, max_k=50))) as c:
        for path, params in (("/v1/recommendations", {"user_id": "u", "k": 60}),
                             ("/v1/items/i/similar", {"k": 60})):
            r = c.get(path, params=params)
            assert r.status_code == 422, r.text
            (error,) = r.json()["detail"]
            assert error["loc"] == ["query", "k"] and error["ctx"] == {"le": 50}, error
            assert error["type"] == "less_than_equal"


def test_a_kafka_refusal_names_its_kind_not_its_text(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The 503 of a refused write carried the Kafka client's message (broker addresses,
    settings) to any caller; it goes to the log, the caller gets its kind."""
    from concurrent.futures import Future

    from stream.kafka.base import KafkaClientError

    class Refusing:
        def submit(self, records: list[object]) -> list[Future[object]]:
            out: list[Future[object]] = []
            for _ in records:
                f: Future[object] = Future()
                f.set_exception(KafkaClientError("TOPIC_AUTHORIZATION_FAILED at "
                                                 "10.1.2.3:9093", retriable=False))
                out.append(f)
            return out

    from serving.routers import events

    monkeypatch.setattr(client.app.state.serving, "ingestor", Refusing())  # type: ignore[attr-defined]
    from stream.logfilter import RepeatFilter

    # A fresh throttle: the line is not held back by an earlier test's refusal.
    monkeypatch.setattr(events._refusals, "filters", [RepeatFilter(every_s=10.0)])
    ok = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1_700_000_000}
    with caplog.at_level(logging.WARNING, logger="serving.routers.events"):
        r = client.post("/v1/events", json=ok)
    assert r.status_code == 503 and r.json()["reason"] == "produce_failed"
    assert "KafkaClientError" in r.json()["detail"] and "10.1.2.3" not in r.text
    assert "TOPIC_AUTHORIZATION_FAILED at 10.1.2.3:9093" in caplog.text


def test_a_partly_stored_batch_says_which_events_by_position(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 listed the stored events' ids only: server-made when the client sent none,
    so it could not tell which of its events to retry."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from stream.kafka.base import KafkaClientError

    class Partly:  # Kafka stores the events at even positions, refuses the others
        def submit(self, records: list[object]) -> list[Future[object]]:
            out: list[Future[object]] = []
            for i, _ in enumerate(records):
                f: Future[object] = Future()
                if i % 2 == 0:
                    f.set_result(SimpleNamespace(topic="clicks", partition=0, offset=i))
                else:
                    f.set_exception(KafkaClientError("MSG_SIZE_TOO_LARGE", retriable=False))
                out.append(f)
            return out

    monkeypatch.setattr(client.app.state.serving, "ingestor", Partly())  # type: ignore[attr-defined]
    ev = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1_700_000_000}
    batch = [ev, {**ev, "event_id": "mine-1"}, {**ev, "event_id": "mine-2"}, ev, ev]
    r = client.post("/v1/events", json=batch)
    assert r.status_code == 503 and r.json()["reason"] == "produce_failed"
    body = r.json()
    assert body["delivered_indices"] == [0, 2, 4]
    assert body["delivered"][1] == "anonymous/mine-2"
    assert len(body["delivered"]) == 3 and "anonymous/mine-1" not in body["delivered"]
    refused = client.app.openapi()["components"]["schemas"]["Refused"]  # type: ignore[attr-defined]
    assert "delivered_indices" in refused["properties"]


def test_post_event_rejections(client: TestClient) -> None:
    ok = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1_700_000_000}
    r = client.post("/v1/events", content=b"user_id=u", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["reason"] == "bad_content_type"
    big = b'{"user_id": "' + b"u" * 70_000 + b'"}'  # over the 64 KiB default
    r = client.post("/v1/events", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"
    r = client.post("/v1/events", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["reason"] == "not_json"
    for nothing in (b"", b" \n"):  # said as such, not as a JSON syntax error
        r = client.post("/v1/events", content=nothing,
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["reason"] == "empty", nothing
    r = client.post("/v1/events", json={**ok, "event_type": "buy"})
    assert r.status_code == 422 and r.json()["reason"] == "bad_event_type"
    # A null event_id (what JSON.stringify makes of a field left null) is an absent one:
    # past validation (503: no Kafka here), not "event_id is missing".
    r = client.post("/v1/events", json={**ok, "event_id": None})
    assert r.status_code == 503 and r.json()["reason"] == "no_producer", r.text
    r = client.post("/v1/events", json={k: v for k, v in ok.items() if k != "user_id"})
    assert r.status_code == 422 and r.json()["reason"] == "missing_field"
    r = client.post("/v1/events", json={**ok, "timestamp": "yesterday-ish"})
    assert r.status_code == 422 and r.json()["reason"] == "bad_timestamp"
    r = client.post("/v1/events", content=b'{"user_id": "\xff"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["reason"] == "not_utf8"
    for bad in ("a\x00b", "tab\there", "\x85", "del\x7f"):
        r = client.post("/v1/events", json={**ok, "item_id": bad})
        assert r.status_code == 422 and r.json()["reason"] == "bad_id", bad
    # Valid, but this app has no Kafka: 503 with a reason, never a 500.
    r = client.post("/v1/events", json=ok)
    assert r.status_code == 503 and r.json()["reason"] == "no_producer"


def test_dashboard_data_has_real_figures(client: TestClient) -> None:
    import time

    deadline = time.monotonic() + 10
    points: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(points) < 2:
        client.get("/v1/recommendations", params={"user_id": "u000001"})
        points = client.get("/v1/dashboard/data").json()["points"]
        time.sleep(0.1)
    assert len(points) >= 2
    last = points[-1]
    assert last["hr10"] == {"bpr": 0.12}
    assert last["psi"] == {"item_popularity": 0.05}
    assert last["snapshot_version"] == 1
    assert last["latency_p99_ms"] is not None and last["latency_p99_ms"] > 0
    assert last["freshness_s"] is not None and last["freshness_s"] > 0
    page = client.get("/dashboard")
    assert page.status_code == 200 and "/static/dashboard.js" in page.text
    assert "http" not in page.text.split("<body>")[1].split("</body>")[0]
    assert last["source"] == "live_tail" and last["drift_alarms"] == 0


def test_dashboard_does_not_make_a_dead_trainer_look_healthy(store: SnapshotStore) -> None:
    """With the trainer named and not answering, its figures were replaced by the
    server's own live-tail rate and lag and the last snapshot's HR@10 (flat lines)."""
    import time

    app = create_app(settings_for(store.root, dashboard_interval_s=0.1,
                                  trainer_metrics_url="http://127.0.0.1:9/metrics"))
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        points: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(points) < 2:
            points = c.get("/v1/dashboard/data").json()["points"]
            time.sleep(0.1)
        data = c.get("/v1/dashboard/data").json()
    last = data["points"][-1]
    assert last["source"] == "trainer_down" and data["scrape_error"]
    assert last["ingest_rate"] is None and last["consumer_lag"] is None
    assert last["hr10"] == {} and last["psi"] == {} and last["drift_alarms"] is None
    assert last["snapshot_version"] == 1  # the server's own figures stay



def test_micro_batching_counters_are_exported(client: TestClient, trained: Trained) -> None:
    user, _ = _user_with_history(trained[1])
    for _ in range(3):
        assert client.get("/v1/recommendations", params={"user_id": user}).status_code == 200
    reg = client.app.state.serving.metrics.registry  # type: ignore[attr-defined]
    scored = sum(
        reg.get_sample_value(f"liverec_serving_rank_{kind}_queries_total") or 0.0
        for kind in ("inline", "batched")
    )
    assert scored == 3.0  # sequential requests: each scored alone or in a batch, once
    assert reg.get_sample_value("liverec_serving_rank_failed_batches_total") == 0.0
    assert "liverec_serving_rank_largest_batch" in client.get("/metrics").text


def test_every_answer_carries_a_request_id_found_in_its_log_lines(
        store: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller's sane X-Request-ID is answered back, else one is made; the lines logged
    while answering carry it, an unhandled error's traceback included."""
    import logging
    import threading
    import time

    import httpx
    import uvicorn

    from serving.request_id import RequestIdFilter
    from stream.broker import free_port

    app = create_app(settings_for(store.root))

    @app.get("/boom")
    async def boom() -> None:
        logging.getLogger("liverec.test").warning("about to fail")
        raise RuntimeError("a bug")

    from serving.ranking import LoadedSnapshot

    recommend = LoadedSnapshot.recommend

    def logged(self: LoadedSnapshot, *args: Any, **kwargs: Any) -> Any:
        logging.getLogger("liverec.test").warning("scoring in the rank pool")
        return recommend(self, *args, **kwargs)

    monkeypatch.setattr(LoadedSnapshot, "recommend", logged)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    logging.getLogger().addHandler(handler)
    # uvicorn itself (not the test client): it logs an unhandled error's traceback
    # after the app returned, in the request's own task.
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None,
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        given = httpx.get(f"{base}/v1/users/u", headers={"X-Request-ID": "shop-7f3a"})
        assert given.headers["x-request-id"] == "shop-7f3a"
        made = httpx.get(f"{base}/v1/users/u", headers={"X-Request-ID": "not a token"})
        assert len(made.headers["x-request-id"]) == 32
        assert made.headers["x-request-id"] != httpx.get(f"{base}/healthz").headers[
            "x-request-id"]
        httpx.get(f"{base}/v1/recommendations", params={"user_id": "u000001"},
                  headers={"X-Request-ID": "ranked-1"})
        crashed = httpx.get(f"{base}/boom", headers={"X-Request-ID": "trace-500"})
        assert crashed.status_code == 500
        assert crashed.json()["detail"]["reason"] == "internal_error"
        assert crashed.headers["x-request-id"] == "trace-500"
    finally:
        server.should_exit = True
        thread.join(30)
        logging.getLogger().removeHandler(handler)
    # A thread of the rank pool logs in the request's context too.
    assert any(r.getMessage() == "scoring in the rank pool"
               and getattr(r, "request_id", None) == "ranked-1" for r in records), records
    tagged = [r for r in records if getattr(r, "request_id", None) == "trace-500"]
    assert any(r.getMessage() == "about to fail" for r in tagged), records
    assert any(r.exc_info for r in tagged), "the traceback's record lacks the id"
    # the text log shows it too: at the end of the first line, the traceback below
    from liverec.logs import TextFormatter

    text = TextFormatter().format(next(r for r in tagged if r.exc_info)).splitlines()
    assert text[0].endswith(" request_id=trace-500"), text[0]
    assert text[-1] == "RuntimeError: a bug"


def _event_alternatives(app: Any) -> list[dict[str, Any]]:
    body = app.openapi()["paths"]["/v1/events"]["post"]["requestBody"]["content"]
    return list(body["application/json"]["schema"]["anyOf"])


def test_the_schema_states_this_servers_batch_limit(store: SnapshotStore) -> None:
    """The event array had no maxItems (the server refuses past max_batch_events, and
    past the write burst under a write rate limit)."""
    from serving.ratelimit import RateLimitSettings

    for limit, burst, rate, expected in ((7, 500, 100, 7), (100, 500, 100, 100),
                                         (1000, 300, 100, 300), (1000, 300, 0, 1000)):
        app = create_app(settings_for(store.root, max_batch_events=limit),
                         limits=RateLimitSettings(write_burst=burst, write_per_s=rate))
        arrays = [a for a in _event_alternatives(app) if a.get("type") == "array"]
        assert [a["maxItems"] for a in arrays] == [expected], (limit, burst, rate)


def test_the_schema_states_this_servers_limits(store: SnapshotStore) -> None:
    """k's maximum and the events' id lengths follow the settings (they said 1000 and
    256 whatever the server refused); other apps in the process keep their own."""
    small = create_app(settings_for(store.root, max_k=50, max_id_chars=64))
    default = create_app(settings_for(store.root))
    for app, max_k, max_id in ((small, 50, 64), (default, 1000, 256)):
        ks = [p["schema"]["maximum"] for ops in app.openapi()["paths"].values()
              for op in ops.values() for p in op.get("parameters", []) if p["name"] == "k"]
        assert len(ks) == 3 and set(ks) == {max_k}
        for alt in _event_alternatives(app):
            event = alt.get("items", alt)["properties"]
            for field in ("event_id", "user_id", "item_id", "session_id"):
                strings = [s for s in (event[field], *event[field].get("anyOf", ()))
                           if s.get("type") == "string"]
                assert [s["maxLength"] for s in strings] == [max_id], field
        # a read's id is bounded by the schema's own limit, which the route enforces
        users = app.openapi()["paths"]["/v1/users"]["get"]["parameters"]
        assert users[0]["schema"]["maxLength"] == 256
    with TestClient(small) as c:
        assert c.get("/v1/users", params={"user_id": "u" * 100}).status_code == 200


def test_the_schema_lists_anonymous_access_where_it_is_open(
        store: SnapshotStore, tmp_path: Path) -> None:
    """A scope open to anonymous callers lists the empty requirement ({}) beside the
    keys; one that needs a key does not (anonymous writes close when a key is added)."""
    from serving.auth import AuthSettings, KeyFile

    def security(app: Any) -> dict[str, bool]:
        paths = app.openapi()["paths"]
        return {path: {} in paths[path][method]["security"] for path, method in (
            ("/v1/recommendations", "get"), ("/v1/users/{user_id}", "get"),
            ("/v1/events", "post"), ("/metrics", "get"), ("/v1/model", "get"))}

    assert "security" not in create_app(settings_for(store.root)).openapi()["paths"][
        "/healthz"]["get"]
    assert set(security(create_app(settings_for(store.root))).values()) == {True}
    keys = tmp_path / "keys.txt"
    KeyFile(keys).add("reader", {"read"})
    secured = create_app(settings_for(store.root), auth=AuthSettings(
        api_keys_file=keys, require_read_key=True))
    assert security(secured) == {"/v1/recommendations": False, "/v1/users/{user_id}": False,
                                 "/v1/events": False, "/metrics": True, "/v1/model": True}
    closed = create_app(settings_for(store.root), auth=AuthSettings(
        api_keys_file=keys, protect_ops=True))
    assert security(closed) == {"/v1/recommendations": True, "/v1/users/{user_id}": True,
                                "/v1/events": False, "/metrics": False, "/v1/model": False}
    # A key added while the server runs closes anonymous writes: the schema says so at
    # the next request for it, whether or not a write came in between.
    later = tmp_path / "later.txt"
    later.write_text("")
    running = create_app(settings_for(store.root), auth=AuthSettings(api_keys_file=later))
    assert security(running)["/v1/events"] is True
    KeyFile(later).add("ingest", {"write"})
    time.sleep(1.1)  # the key file is re-read at most once a second
    assert security(running)["/v1/events"] is False


def test_readiness_documents_its_body(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    responses = app.openapi()["paths"]["/readyz"]["get"]["responses"]
    for status in ("200", "503"):
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/Readiness"
    with TestClient(app) as c:  # no snapshot: not ready
        body = c.get("/readyz").json()
    assert body["ready"] is False and body["status"] == "not_ready" and body["reason"]
