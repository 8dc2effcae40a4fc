"""Snapshot store: round trip, retention, atomic publish and refusal of damaged snapshots."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import orjson
import pytest

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory
from online_models.snapshot import FORMAT_VERSION, SnapshotError, SnapshotStore


class CounterModel(OnlineModel):
    """Smallest real model: per-item weighted counts (enough to check exact state)."""

    name = "test-counter"

    def __init__(self, dim: int = 4) -> None:
        self.dim = dim
        self.items = IdIndex()
        self.users = IdIndex()
        self.counts = np.zeros(0, np.float64)
        self.vectors = np.zeros((0, dim), np.float32)

    def learn(self, batch: Batch) -> None:
        self.users.add_many(batch.users)
        rows = self.items.add_many(batch.items)
        if self.items.capacity > len(self.counts):
            grow = self.items.capacity - len(self.counts)
            self.counts = np.concatenate([self.counts, np.zeros(grow)])
            self.vectors = np.vstack([self.vectors, np.ones((grow, self.dim), np.float32)])
        np.add.at(self.counts, rows, batch.weights)

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return self.counts.astype(np.float32)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        return []

    def item_vectors(self) -> np.ndarray | None:
        return self.vectors

    def get_state(self) -> ModelState:
        arrays: dict[str, np.ndarray] = {"counts": self.counts, "vectors": self.vectors}
        arrays.update(self.items.to_arrays("items"))
        arrays.update(self.users.to_arrays("users"))
        return ModelState(arrays, {"class": self.name, "params": self.get_params()})

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**state.meta["params"])
        m.items = IdIndex.from_arrays(state.arrays, "items")
        m.users = IdIndex.from_arrays(state.arrays, "users")
        m.counts = state.arrays["counts"].copy()
        m.vectors = state.arrays["vectors"].copy()
        return m


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.MODEL_PATHS, "test-counter", "tests.models.test_snapshot:CounterModel"
    )


def _trained(n: int = 50, seed: int = 0) -> tuple[CounterModel, UserHistory]:
    rng = np.random.default_rng(seed)
    users = [f"u{x}" for x in rng.integers(0, 10, n)]
    items = [f"i{x}" for x in rng.integers(0, 20, n)]
    m = CounterModel()
    m.learn(Batch.from_columns(users, items, rng.random(n), np.arange(n, dtype=float)))
    h = UserHistory(max_items=5)
    h.extend(users, items)
    return m, h


def _write(store: SnapshotStore, events: int = 50, seed: int = 0) -> int:
    m, h = _trained(events, seed)
    return store.write(
        {"counter": m},
        history=h,
        offsets={"clicks": {0: events, 1: 7}},
        events_total=events,
        watermark=float(events),
        metrics={"counter": {"hr@10": 0.5}},
        extra_arrays={"dedup.ts": np.arange(3, dtype=np.float64)},
        extra_meta={"note": "x"},
    ).version


def test_round_trip_restores_exact_state(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    m, h = _trained()
    info = store.write(
        {"counter": m},
        history=h,
        offsets={"clicks": {0: 50}},
        events_total=50,
        watermark=49.0,
        metrics={"counter": {"hr@10": 0.25}},
        extra_arrays={"dedup.ts": np.arange(3, dtype=np.float64)},
        extra_meta={"dedup_window_s": 60},
    )
    assert info.version == 1 and info.bytes > 0 and info.path.name == "000000000001"
    snap = store.load()
    back = snap.models["counter"]
    assert isinstance(back, CounterModel)
    np.testing.assert_array_equal(back.counts, m.counts)
    assert back.items.ids == m.items.ids
    assert snap.history.get("u1") == h.get("u1")
    assert snap.offsets == {"clicks": {0: 50}}
    assert snap.events_total == 50 and snap.watermark == 49.0
    np.testing.assert_array_equal(snap.extra_arrays["dedup.ts"], np.arange(3.0))
    assert snap.extra_meta == {"dedup_window_s": 60}
    man = snap.manifest
    assert man["format_version"] == FORMAT_VERSION
    assert man["models"]["counter"]["class"] == "test-counter"
    assert man["models"]["counter"]["n_items"] == m.n_items
    assert man["metrics"] == {"counter": {"hr@10": 0.25}}
    assert set(man["files"]) == {"model-counter.safetensors", "state.safetensors"}


def test_versions_are_monotonic_and_old_ones_pruned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    written = [_write(store, events=10 + i) for i in range(5)]
    assert written == [1, 2, 3, 4, 5]
    assert store.versions() == [3, 4, 5]
    assert store.latest_version() == 5
    assert (tmp_path / "LATEST").read_text().strip() == "5"
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("target", ["model-counter.safetensors", "state.safetensors"])
def test_flipped_byte_is_refused_and_previous_used(
    tmp_path: Path, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path)
    _write(store, events=20)
    _write(store, events=30)
    f = store.path_of(2) / target
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        store.load(2)
    with caplog.at_level(logging.WARNING):
        snap = store.load_latest_valid()
    assert snap is not None and snap.version == 1 and snap.events_total == 20
    assert "checksum mismatch" in caplog.text


def test_tampered_manifest_truncation_and_format_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    _write(store)
    path = store.path_of(1)
    man = orjson.loads((path / "manifest.json").read_bytes())

    man["events_total"] = 999  # a plausible edit that still parses
    (path / "manifest.json").write_bytes(orjson.dumps(man))
    with pytest.raises(SnapshotError, match="manifest checksum"):
        store.load(1)

    man["events_total"] = 50
    man["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_bytes(orjson.dumps(man))
    with pytest.raises(SnapshotError, match="format_version"):
        store.load(1)

    _write(store)
    f = store.path_of(2) / "model-counter.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SnapshotError):
        store.load(2)
    assert store.load_latest_valid() is None  # both versions are damaged


def test_files_outside_the_version_directory_are_refused(tmp_path: Path) -> None:
    """Checksums catch damage, not a writer of the volume: a manifest naming
    ``../x`` read a model from outside its version, and links were followed."""
    from online_models.snapshot import _manifest_digest

    store = SnapshotStore(tmp_path / "s")
    _write(store)
    _write(store)
    path = store.path_of(2)
    outside = tmp_path / "outside.safetensors"
    (path / "model-counter.safetensors").rename(outside)
    man = orjson.loads((path / "manifest.json").read_bytes())
    name = "../../outside.safetensors"
    man["files"][name] = man["files"].pop("model-counter.safetensors")
    man["models"]["counter"]["file"] = name
    man["manifest_sha256"] = _manifest_digest(man)
    (path / "manifest.json").write_bytes(orjson.dumps(man))
    with pytest.raises(SnapshotError, match="not a plain file name"):
        store.load(2)
    # A link in place of a file, or of a whole version, is not followed either.
    _write(store)
    os.remove(store.path_of(3) / "model-counter.safetensors")
    os.symlink(outside, store.path_of(3) / "model-counter.safetensors")
    with pytest.raises(SnapshotError, match="cannot read"):
        store.load(3)
    # A FIFO listed under a plain name is refused, not read (that blocked for ever).
    _write(store)
    os.remove(store.path_of(4) / "model-counter.safetensors")
    os.mkfifo(store.path_of(4) / "model-counter.safetensors")
    with pytest.raises(SnapshotError, match="not a regular file"):
        store.load(4)
    real = tmp_path / "elsewhere"
    store.path_of(1).rename(real)
    os.symlink(real, store.path_of(1))
    assert store.versions() == [2, 3, 4] and store.load_latest_valid() is None
    # ... nor loaded when LATEST names it.
    (store.root / "LATEST").write_text("1\n")
    assert store.latest_version() == 1
    with pytest.raises(SnapshotError, match="is a link"):
        store.load()


def test_empty_store_and_next_version_after_fallback(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.latest_version() is None and store.load_latest_valid() is None
    with pytest.raises(SnapshotError, match="no snapshot"):
        store.load()
    _write(store)
    _write(store)
    (store.path_of(2) / "manifest.json").write_bytes(b"{not json")
    assert store.load_latest_valid().version == 1  # type: ignore[union-attr]
    # A new write never reuses a number, even one whose snapshot was refused.
    assert _write(store) == 3


def test_a_write_leaves_another_writers_temporary_directory_alone(tmp_path: Path) -> None:
    # Scale-out trainers all write merged snapshots into one location: one's clean-up
    # must not delete the directory another is writing (it removed every .tmp-* and
    # the other write failed). A crashed write's leftover goes once it is old.
    store = SnapshotStore(tmp_path, keep=3)
    busy = tmp_path / ".tmp-000000000002-other"
    busy.mkdir()
    crashed = tmp_path / ".tmp-000000000001-crash"
    crashed.mkdir()
    old = time.time() - 2 * SnapshotStore.STALE_TMP_S
    os.utime(crashed, (old, old))
    _write(store, events=1)
    assert busy.is_dir()
    assert not crashed.exists()


def test_writers_sharing_a_location_never_collide(tmp_path: Path) -> None:
    # Scale-out trainers write merged snapshots into one location at once: each write
    # must get its own version (two picked the same number and one rename failed with
    # "Directory not empty"), and every published version must load.
    stores = [SnapshotStore(tmp_path, keep=100) for _ in range(4)]
    got: list[int] = []
    errors: list[BaseException] = []

    def writer(store: SnapshotStore, seed: int) -> None:
        try:
            for k in range(8):
                got.append(_write(store, events=20 + k, seed=seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == list(range(1, 33))
    check = SnapshotStore(tmp_path, keep=100)
    assert check.versions() == list(range(1, 33))
    for v in check.versions():
        assert check.load(v).version == v
    assert not list(tmp_path.glob(".tmp-*"))


def test_concurrent_publishers_never_move_latest_backwards(tmp_path: Path) -> None:
    # Two writers of one location (scale-out trainers handing the merge over) publish
    # interleaved versions; LATEST may only ever move forward.
    store = SnapshotStore(tmp_path, keep=1000)
    n = 120
    seen: list[int] = []
    order = threading.Lock()

    def publish(first: int) -> None:
        for v in range(first, n + 1, 2):
            store.path_of(v).mkdir()  # as a write renames its finished directory in
            (store.path_of(v) / "manifest.json").write_text("{}")
            store._publish(v)
            with order:  # reads in time order
                seen.append(int((tmp_path / "LATEST").read_text()))

    store.path_of(1).mkdir()
    (store.path_of(1) / "manifest.json").write_text("{}")
    store._publish(1)
    seen.append(1)
    writers = [threading.Thread(target=publish, args=(first,)) for first in (2, 3)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert store.latest_version() == n
    assert len(seen) == n
    assert seen == sorted(seen), "LATEST moved backwards"


def test_a_state_written_again_unchanged_is_hard_linked_and_survives_pruning(
        tmp_path: Path) -> None:
    """A captured state object written by the last snapshot (a followed model's copy)
    is linked into the next version; pruning the first keeps it readable."""
    from online_models.popularity import Popularity
    from online_models.snapshot import capture

    m = Popularity()
    m.learn(Batch.from_columns(["u", "v"], ["a", "b"], None, [1.0, 2.0]))
    store = SnapshotStore(tmp_path, keep=2)
    frozen = capture({"popularity": m}, history=UserHistory(), offsets={}, events_total=0,
                     watermark=None).models["popularity"]
    paths = []
    for k in range(3):
        cap = capture({"popularity": m, "again": m}, history=UserHistory(),
                      offsets={"t": {0: k}}, events_total=k, watermark=None,
                      reuse={"popularity": frozen})
        paths.append(store.write_captured(cap).path)
    assert not paths[0].exists()  # pruned (keep=2), where the file was first written
    snap = store.load()  # verifies every checksum
    assert snap.events_total == 2 and snap.models["popularity"].n_items == 2
    linked = (paths[2] / "model-popularity.safetensors").stat()
    assert linked.st_nlink == 2  # versions 2 and 3 share it
    assert (paths[2] / "model-again.safetensors").stat().st_nlink == 1  # copied anew


@pytest.mark.parametrize("seed", range(6))
def test_a_history_packs_only_its_touched_users_again_and_the_same_arrays(seed: int) -> None:
    # From its second snapshot on, a history repacks only the users touched or dropped
    # since the last one; the arrays must equal a full packing after any mix of changes.
    import random

    rnd = random.Random(seed)
    h = UserHistory(max_items=3, max_users=rnd.choice([None, 15]))
    h.evicted = []
    snapshots = 0
    for _ in range(400):
        op = rnd.random()
        if op < 0.5:
            h.append(f"u{rnd.randrange(30)}", f"i{rnd.randrange(20)}")
        elif op < 0.8:
            n = rnd.randrange(8)
            h.advance([f"u{rnd.randrange(30)}" for _ in range(n)],
                      [f"i{rnd.randrange(20)}" for _ in range(n)])
        elif op < 0.85:
            h.forget([f"u{rnd.randrange(30)}" for _ in range(rnd.randrange(3))])
        elif op < 0.88:
            h.limit_users(rnd.choice([None, 10, 20]))
        else:
            got = h.to_arrays()
            fresh = UserHistory(max_items=3)
            fresh._items = h._items  # packs every user (its first snapshot)
            want = fresh.to_arrays()
            assert got.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
            back = UserHistory.from_arrays(got, max_items=3)
            assert list(back._items.items()) == list(h._items.items())
            snapshots += 1
    assert snapshots > 20


class _LiveArrays:
    """A model stand-in whose state mixes arrays it keeps, views of them, arrays over
    foreign memory and arrays made for the call."""

    name = "live"
    n_users = n_items = 0

    def __init__(self) -> None:
        self.kept = np.arange(6.0)
        self.foreign = bytearray(np.arange(3.0).tobytes())

    def get_state(self) -> ModelState:
        return ModelState(arrays={
            "kept": self.kept,
            "view": self.kept[2:],
            "foreign": np.frombuffer(self.foreign, np.float64),
            "fresh": self.kept * 2.0,
        }, meta={"class": "live", "params": {}})


def test_capture_copies_what_the_model_may_change_and_takes_fresh_arrays() -> None:
    """A capture must not change when the live model does: arrays the model keeps, views
    of them and arrays over foreign memory are copied. An array get_state made for the
    call is taken as it is (nothing else refers to it): copying it again was waste."""
    from online_models.snapshot import capture

    model = _LiveArrays()
    first = model.get_state().arrays["fresh"]
    assert first.flags.owndata
    cap = capture({"live": model}, history=UserHistory(), offsets={}, events_total=0,  # type: ignore[dict-item]
                  watermark=None)
    arrays = cap.models["live"][0].arrays
    model.kept += 100.0
    model.foreign[:8] = np.float64(-1.0).tobytes()
    assert arrays["kept"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert arrays["view"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert arrays["foreign"].tolist() == [0.0, 1.0, 2.0]
    assert arrays["fresh"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert not np.shares_memory(arrays["kept"], model.kept)


def test_detached_takes_only_arrays_nothing_else_holds() -> None:
    from online_models.snapshot_capture import _detached

    held = np.arange(4.0)
    arrays = {"held": held, "fresh": np.arange(4.0) + 1.0}
    fresh = arrays["fresh"]
    del fresh  # now only the dict refers to it
    out = _detached(arrays)
    assert out["held"] is not held and np.array_equal(out["held"], held)
    assert out["fresh"] is arrays["fresh"]


def test_a_write_on_two_threads_writes_the_same_files_as_one(tmp_path: Path) -> None:
    # The synchronous (shutdown) write writes two files at a time: same bytes, same
    # manifest checksums, and the linked (unchanged) file still linked.
    from online_models.popularity import Popularity
    from online_models.snapshot import capture

    models: dict[str, OnlineModel] = {n: registry.create(n) for n in ("popularity", "itemknn")}
    models["linked"] = Popularity()
    b = Batch.from_columns(["u", "v", "u"], ["a", "b", "c"], None, [1.0, 2.0, 3.0])
    for m in models.values():
        m.learn(b)
    h = UserHistory()
    h.extend(b.users, b.items)
    frozen = capture({"linked": models["linked"]}, history=h, offsets={}, events_total=0,
                     watermark=None).models["linked"]
    digests = []
    for threads, root in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        store = SnapshotStore(root)
        for _ in range(2):
            cap = capture(models, history=h, offsets={"t": {0: 3}}, events_total=3,
                          watermark=3.0, reuse={"linked": frozen})
            info = store.write_captured(cap, threads=threads)
        manifest = orjson.loads((info.path / "manifest.json").read_bytes())
        digests.append(manifest["files"])
        assert (info.path / "model-linked.safetensors").stat().st_nlink == 2  # both versions
        snap = store.load()  # verifies every checksum
        assert snap.history.get("u") == ["a", "c"]
        assert snap.models["itemknn"].n_items == 3
    assert digests[0] == digests[1]
