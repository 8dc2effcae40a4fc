"""Item-side deltas: trainers owning disjoint users build one model's item state exactly."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_models import registry
from online_models.base import Batch, OnlineModel
from online_models.bpr import BPR
from online_models.deltas import (
    ItemDelta,
    SharedIds,
    decode_deltas,
    delta_rows,
    encode_deltas,
    learns_from_item_state,
    shares_item_state,
    unsupported,
)
from online_models.synthetic import generate_events
from tests.models.planted import planted

SHARING = ["popularity", "itemknn", "sequence"]
PARAMS: list[dict[str, object]] = [
    {},  # default half-lives (decay on)
    {"half_life_seconds": None},
    {"half_life_seconds": 3600.0},
]


def _events(n: int = 6000) -> Batch:
    rows = list(generate_events(n, 300, 200, seed=5))
    return Batch.from_columns(
        [r["user_id"] for r in rows], [r["item_id"] for r in rows],
        [1.0 + (k % 3) for k in range(n)], [float(r["timestamp"]) for r in rows],
    )


def _by_user(events: Batch, size: int, trainers: int = 2) -> Iterator[tuple[int, Batch]]:
    """Chunks of ``size`` events, each split between ``trainers`` by a hash of the user
    (as Kafka partitions by key): ``(trainer, its events of the chunk)`` in order."""
    part = np.asarray([zlib.crc32(u.encode()) % trainers for u in events.users])
    for start in range(0, len(events), size):
        chunk, owner = events[start : start + size], part[start : start + size]
        for p in range(trainers):
            yield p, chunk[owner == p]


def _item_state(model: OnlineModel) -> dict[str, dict[object, float]]:
    """Item-side state keyed by item ids (row order differs between trainers)."""
    st = model.get_state().arrays
    ids = list(model.items.ids)
    if "mass" in st:
        return {"mass": {ids[r]: float(v) for r, v in enumerate(st["mass"]) if v}}
    keys, vals = st["pairs.keys"], st["pairs.values"]
    pairs = {(ids[int(k) >> 32], ids[int(k) & 0xFFFFFFFF]): float(v)
             for k, v in zip(keys, vals, strict=True)}
    counts = {ids[r]: float(v) for r, v in enumerate(st["counts"]) if v}
    return {"pairs": pairs, "counts": counts}


def _assert_close(got: dict[str, dict[object, float]], want: dict[str, dict[object, float]]
                  ) -> None:
    assert got.keys() == want.keys()
    for part in want:
        assert set(got[part]) == set(want[part]), part
        keys = sorted(want[part], key=str)
        np.testing.assert_allclose([got[part][k] for k in keys], [want[part][k] for k in keys],
                                   rtol=1e-9, err_msg=part)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("name", SHARING)
def test_two_trainers_by_user_partition_equal_one(name: str, params: dict[str, object]
                                                  ) -> None:
    events = _events()
    single = registry.create(name, **params)
    for chunk in events.chunks(500):
        single.learn(chunk)
    # Two "trainers", users split by a hash (as Kafka partitions by key); each learns
    # its users locally and every delta goes through bytes to both of them.
    trainers = [registry.create(name, **params) for _ in range(2)]
    for p, sub in _by_user(events, 700):
        delta = trainers[p].learn_local(sub)  # type: ignore[attr-defined]
        wire = decode_deltas(encode_deltas({name: delta}, {"p": p}))[1][name]
        for t in trainers:
            t.apply_delta(wire)  # type: ignore[attr-defined]
    want = _item_state(single)
    for t in trainers:
        _assert_close(_item_state(t), want)
    assert single.get_state().meta["watermark"] == trainers[0].get_state().meta["watermark"]


@pytest.mark.parametrize("params", [*PARAMS, {"half_life_seconds": 1.0}])
@pytest.mark.parametrize("name", SHARING)
def test_apply_deltas_equals_applying_one_by_one(name: str, params: dict[str, object]
                                                 ) -> None:
    """A fold of several messages at once holds what one message at a time does; with
    a one-second half-life the 22-minute stream moves the forward-decay landmark
    (every 400 half-lives) inside a group of deltas."""
    events = _events()
    learner = registry.create(name, **params)
    deltas = [learner.learn_local(chunk) for chunk in events.chunks(300)]  # type: ignore[attr-defined]
    deltas.insert(3, ItemDelta([]))  # an empty message changes nothing
    one, many = registry.create(name, **params), registry.create(name, **params)
    for d in deltas:
        one.apply_delta(d)  # type: ignore[attr-defined]
    for k in range(0, len(deltas), 7):
        many.apply_deltas(deltas[k : k + 7])  # type: ignore[attr-defined]
    _assert_close(_item_state(many), _item_state(one))
    assert many.get_state().meta["watermark"] == one.get_state().meta["watermark"]
    user = str(events.users[-1])
    assert many.recommend(user, k=10) == one.recommend(user, k=10) != []


@pytest.mark.parametrize("name", [*SHARING, "bpr"])
def test_a_fold_through_one_id_table_equals_one_message_at_a_time(name: str) -> None:
    """The fold's path: messages of two trainers (every model's ids in one table per
    message), decoded and re-pointed at one table per read (SharedIds), give the item
    state that applying each decoded message alone gives."""
    events = _events()
    names = [name, "popularity"] if name != "popularity" else [name]
    trainers = [{n: registry.create(n) for n in names} for _ in range(2)]
    wire = [encode_deltas({n: m.learn_local(sub)  # type: ignore[attr-defined]
                           for n, m in trainers[p].items()})
            for p, sub in _by_user(events, 400)]
    one, many = registry.create(name), registry.create(name)
    for raw in wire:
        one.apply_delta(decode_deltas(raw)[1][name])  # type: ignore[attr-defined]
    for k in range(0, len(wire), 9):
        shared = SharedIds()
        read = [decode_deltas(raw)[1] for raw in wire[k : k + 9]]
        for deltas in read:
            before = {n: list(d.items) for n, d in deltas.items()}
            shared.adopt(deltas.values())
            assert {n: d.items for n, d in deltas.items()} == before
            assert all(d.table is shared.ids for d in deltas.values())
        many.apply_deltas([d[name] for d in read])  # type: ignore[attr-defined]
    if name == "bpr":
        assert _rows_by_id(many) == _rows_by_id(one)  # type: ignore[arg-type]
    else:
        _assert_close(_item_state(many), _item_state(one))
    user = str(events.users[-1])
    assert many.recommend(user, k=10) == one.recommend(user, k=10)


def test_the_earlier_message_layout_still_decodes() -> None:
    """An update topic written before the shared id table (one id list per model) is
    folded after an upgrade as it was."""
    import orjson
    import safetensors.numpy as stn

    from online_models.base import pack_strings

    data, offsets = pack_strings(["a", "b"])
    head = {"meta": {"partition": 1}, "models": {"popularity": {"t_ref": 5.0,
                                                                "arrays": ["mass"]}}}
    raw = stn.save({"popularity/items.data": data, "popularity/items.offsets": offsets,
                    "popularity/mass": np.array([1.0, 2.0])},
                   metadata={"liverec.deltas": orjson.dumps(head).decode()})
    meta, out = decode_deltas(raw)
    assert meta == {"partition": 1} and out["popularity"].items == ["a", "b"]
    m = registry.create("popularity", half_life_seconds=None)
    m.apply_deltas([out["popularity"]])  # type: ignore[attr-defined]
    assert m.popularity("b") == 2.0


def test_one_message_holds_each_id_once() -> None:
    """Models that touch the same items share the message's id table."""
    d1 = ItemDelta(["x", "y", "z"], {"v": np.ones(3)}, 1.0)
    d2 = ItemDelta(["z", "x", "w"], {"v": np.ones(3)}, 1.0)
    _, out = decode_deltas(encode_deltas({"a": d1, "b": d2, "c": d1}))
    assert out["a"].table is out["b"].table and sorted(out["a"].table) == ["w", "x", "y", "z"]
    assert [out[n].items for n in "abc"] == [d1.items, d2.items, d1.items]
    with pytest.raises(ValueError, match="either items or a table"):
        ItemDelta(["x"], table=["x"], index=np.zeros(1, np.int64))
    rows = delta_rows([out["a"], out["b"]], lambda ids: np.arange(len(ids)) + 10)
    # one admission of the used ids, in table order: the same id gets the same row
    by_id = {x: int(r) for d, rr in zip((out["a"], out["b"]), rows, strict=True)
             for x, r in zip(d.items, rr, strict=True)}
    assert len(set(by_id.values())) == 4


@pytest.mark.parametrize("name", ["itemknn", "sequence"])  # their learn_local admits items
def test_a_model_scores_items_learned_user_side_before_their_delta_is_folded(name: str
                                                                            ) -> None:
    """The merge writer learns its own events user-side (new items enter the index)
    and scores the next chunk before the update topic brings their counts back: the
    new items score as unseen ones, the known ones as before (a bench run hit a
    shape error here when the index outgrew the count array)."""
    events = _events(3000)
    model, ref = registry.create(name), registry.create(name)
    for m in (model, ref):
        m.apply_delta(m.learn_local(events))  # type: ignore[attr-defined]
    fresh = Batch.from_columns([f"v{k % 50}" for k in range(3000)],
                               [f"new-{k}" for k in range(3000)], [1.0] * 3000,
                               [float(events.timestamps[-1]) + k for k in range(3000)])
    model.learn_local(fresh)  # type: ignore[attr-defined]
    users = [str(u) for u in events.users[-5:]]
    hists = [[str(i) for i in events.items[-3:]]] * 5
    got, want = model.score_many(users, hists), ref.score_many(users, hists)
    known = ref.items.capacity
    assert got.shape == (5, model.items.capacity) and model.items.capacity > known + 2000
    np.testing.assert_allclose(got[:, :known], want)
    single = model.score_all(users[0], hists[0])
    np.testing.assert_allclose(single[:known], ref.score_all(users[0], hists[0]))
    assert model.recommend(users[0], k=10) == ref.recommend(users[0], k=10)


@pytest.mark.parametrize("name", ["itemknn", "sequence"])
def test_user_state_moves_between_trainers(name: str) -> None:
    events = _events(3000)
    a = registry.create(name)
    a.learn(events[:2000])
    users = sorted(set(events.users[:2000]))
    b = registry.create(name)
    b.load_user_state(a.user_state(users))  # type: ignore[attr-defined]
    rest = events[2000:]
    da = a.learn_local(rest)  # type: ignore[attr-defined]
    db = b.learn_local(rest)  # type: ignore[attr-defined]
    ref, got = registry.create(name), registry.create(name)
    ref.apply_delta(da)  # type: ignore[attr-defined]
    got.apply_delta(db)  # type: ignore[attr-defined]
    _assert_close(_item_state(got), _item_state(ref))
    a.forget_users(users)  # type: ignore[attr-defined]
    # Forgotten users are gone: nothing of them to move, and their rows are free.
    gone = a.user_state(users)  # type: ignore[attr-defined]
    assert len(gone["users.offsets"]) == 0 and not any(u in a.users for u in users)


def test_empty_delta_and_codec() -> None:
    m = registry.create("popularity")
    d = m.learn_local(Batch.from_columns([], []))  # type: ignore[attr-defined]
    assert len(d) == 0
    m.apply_delta(d)  # type: ignore[attr-defined]
    meta, out = decode_deltas(encode_deltas({"x": ItemDelta(["a"], {"v": np.ones(1)}, 1.0)},
                                            {"k": 1}))
    assert meta == {"k": 1} and out["x"].items == ["a"] and out["x"].t_ref == 1.0


def test_models_without_deltas_are_named() -> None:
    models = {n: registry.create(n) for n in ("popularity", "bpr", "embedding")}
    assert shares_item_state(models["popularity"]) and shares_item_state(models["bpr"])
    assert unsupported(models) == ["embedding"]
    assert learns_from_item_state(models["bpr"])
    assert not learns_from_item_state(models["popularity"])


def _rows_by_id(model: BPR) -> dict[str, tuple[list[float], float]]:
    ids = model.items.ids
    return {str(ids[r]): (model._V[r].tolist(), float(model._b[r]))
            for r in range(model.items.capacity)}


def test_bpr_item_state_is_a_fold_of_the_deltas() -> None:
    """The learner's item rows equal those of a model that only folds its deltas: its
    steps touch item rows only through the delta it publishes."""
    events = _events(3000)
    learner, folder = BPR(n_factors=8, seed=1), BPR(n_factors=8, seed=1)
    for chunk in events.chunks(500):
        wire = decode_deltas(encode_deltas({"bpr": learner.learn_local(chunk)}))[1]["bpr"]
        learner.apply_delta(wire)
        folder.apply_delta(wire)
    assert _rows_by_id(learner) == _rows_by_id(folder)
    assert len(folder.users) == 0 and len(learner.users) > 0
    # several deltas at once: each one's rows clipped in turn, as one by one
    learner2, batched = BPR(n_factors=8, seed=1), BPR(n_factors=8, seed=1)
    wires = [learner2.learn_local(chunk) for chunk in events.chunks(500)]
    batched.apply_deltas(wires)
    for w in wires:
        learner2.apply_delta(w)
    assert _rows_by_id(batched) == _rows_by_id(learner2)


def test_bpr_two_trainers_by_user_partition_learn_planted_groups() -> None:
    """Each trainer learns its users' steps; every delta reaches both after each round
    (a fold lag of one batch): the shared item rows still separate the groups."""
    trainers = [BPR(n_factors=16, learning_rate=0.1, seed=3) for _ in range(2)]
    events = planted(6000)
    owner = np.asarray([zlib.crc32(u.encode()) % 2 for u in events.users])
    for _ in range(3):
        for start in range(0, len(events), 256):
            chunk = events[start : start + 256]
            mine = owner[start : start + 256]
            deltas = [t.learn_local(Batch(chunk.users[mine == p], chunk.items[mine == p],
                                          chunk.weights[mine == p],
                                          chunk.timestamps[mine == p]))
                      for p, t in enumerate(trainers)]
            for t in trainers:
                for d in deltas:
                    t.apply_delta(d)
    assert _rows_by_id(trainers[0]) == _rows_by_id(trainers[1])
    for user, prefix in (("a1", "A"), ("b2", "B"), ("a7", "A"), ("b5", "B")):
        t = trainers[zlib.crc32(user.encode()) % 2]
        assert user in t.users
        recs = t.recommend(user, k=10)
        assert len(recs) == 10
        assert all(item.startswith(prefix) for item, _ in recs), (user, recs)


def test_bpr_user_rows_move_between_trainers() -> None:
    events = _events(2000)
    a, b = BPR(n_factors=8, seed=1), BPR(n_factors=8, seed=9)
    for chunk in events.chunks(500):
        a.apply_delta(a.learn_local(chunk))
    users = sorted(set(events.users))[:50]
    b.load_user_state(a.user_state(users))
    np.testing.assert_array_equal(b._U[b.users.rows(users)], a._U[a.users.rows(users)])
    a.forget_users(users)
    assert not any(u in a.users for u in users)
    assert len(a.user_state(users)["U"]) == 0


_ids = st.lists(st.text(alphabet="abcdefg", min_size=1, max_size=2), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["p", "q", "r"]), _ids, min_size=1),
                min_size=1, max_size=6))
def test_shared_id_tables_keep_every_deltas_ids(messages: list[dict[str, list[str]]]
                                                ) -> None:
    """Whatever ids the models of some messages list (repeats included), a read's
    shared table gives each delta its ids back, and delta_rows maps each id to one row,
    distinct ids to distinct rows, as looking the names up one by one does."""
    shared = SharedIds()
    read: list[ItemDelta] = []
    for msg in messages:
        raw = encode_deltas({m: ItemDelta(ids, {"v": np.ones(len(ids))}, 1.0)
                             for m, ids in msg.items()})
        decoded = decode_deltas(raw)[1]
        assert {m: d.items for m, d in decoded.items()} == msg
        shared.adopt(decoded.values())
        assert {m: d.items for m, d in decoded.items()} == msg
        read.extend(decoded.values())
    index: dict[str, int] = {}

    def admit(ids: list[str]) -> np.ndarray:
        return np.asarray([index.setdefault(x, len(index)) for x in ids], np.int64)

    rows = delta_rows(read, admit)
    seen: dict[str, int] = {}
    for d, rr in zip(read, rows, strict=True):
        assert len(rr) == len(d)
        for x, r in zip(d.items, rr.tolist(), strict=True):
            assert seen.setdefault(x, r) == r
    assert len(set(seen.values())) == len(seen) == len({x for d in read for x in d.items})
