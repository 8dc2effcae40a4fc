"""IdIndex against a plain dict model: random adds, lookups and removals agree, and its
incremental snapshot packing equals packing every row."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from online_models.base import IdIndex, pack_strings, unpack_strings

# Short ids from a small alphabet: many repeats, many hash-slot collisions.
ids = st.text(alphabet="abcde", min_size=0, max_size=3)
ops = st.lists(
    st.tuples(st.sampled_from(["add_many", "rows", "remove", "snapshot", "restore"]),
              st.lists(ids, max_size=40)),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from([3, IdIndex.CACHE_IDS]))
def test_id_index_agrees_with_a_dict(script: list[tuple[str, list[str]]], cache: int) -> None:
    # A tiny lookup cache is emptied over and over: answers must not depend on it.
    index, model, free = IdIndex(), {}, []  # type: ignore[var-annotated]
    index.CACHE_IDS = cache
    for op, keys in script:
        if op == "add_many":
            got = index.add_many(keys).tolist()
            want = []
            for k in keys:
                if k not in model:
                    model[k] = free.pop() if free else len(model) + len(free)
                want.append(model[k])
            assert got == want
        elif op == "rows":
            assert index.rows(keys).tolist() == [model.get(k, -1) for k in keys]
        elif op == "snapshot":
            got = index.to_arrays("x")
            data, ends = pack_strings(["" if k is None else k for k in index.ids])
            np.testing.assert_array_equal(got["x.data"], data)
            np.testing.assert_array_equal(got["x.offsets"], ends)
            assert got["x.free"].dtype == np.int64 and got["x.free"].tolist() == free
        elif op == "restore":  # the same ids ("" too), free rows reused in the same order
            restored = IdIndex.from_arrays(index.to_arrays("x"), "x")
            restored.CACHE_IDS = cache
            assert restored.ids == index.ids
            index = restored
        elif op == "remove":
            for k in keys:
                if k in model:
                    assert index.remove(k) == model[k]
                    free.append(model.pop(k))
        assert len(index) == len(model)
        assert all(index.ids[r] == k for k, r in model.items())


def test_batch_lookup_matches_single_lookups_at_scale() -> None:
    rng = np.random.default_rng(0)
    keys = [f"item-{i}" for i in range(50_000)]
    index = IdIndex(keys)
    for k in rng.choice(len(keys), 5_000, replace=False).tolist():
        index.remove(keys[k])  # tombstones in the probe chains
    probe = [keys[i] for i in rng.integers(0, len(keys), 20_000)] + ["nope", "item-x"]
    assert index.rows(probe).tolist() == [index.get(k) for k in probe]
    assert index.rows(probe)[-2:].tolist() == [-1, -1]


def test_a_restored_index_reusing_a_freed_row_packs_it_anew() -> None:
    index = IdIndex(["a", "b", "c"])
    index.remove("b")
    restored = IdIndex.from_arrays(index.to_arrays("x"), "x")
    restored.to_arrays("x")  # packs rows a, (freed), c
    assert restored.add("d") == 1  # the freed row, without a removal since the packing
    got = restored.to_arrays("x")
    data, ends = pack_strings(["a", "d", "c"])
    np.testing.assert_array_equal(got["x.data"], data)
    np.testing.assert_array_equal(got["x.offsets"], ends)


def test_a_restored_index_reuses_freed_rows_in_the_live_order() -> None:
    # Models draw a row's initial vector from the row (BPR, embedding, seqnn): a
    # restored index must hand new ids the rows the live one does.
    live = IdIndex([f"u{i}" for i in range(8)])
    for k in ("u2", "u6", "u1", "u5"):
        live.remove(k)
    restored = IdIndex.from_arrays(live.to_arrays("x"), "x")
    new = ["n1", "n2", "n3", "n4", "n5"]
    assert restored.add_many(new).tolist() == live.add_many(new).tolist() == [5, 1, 6, 2, 8]


def test_an_empty_id_survives_a_round_trip_and_keeps_its_row() -> None:
    live = IdIndex(["", "a", "b"])
    live.remove("a")
    restored = IdIndex.from_arrays(live.to_arrays("x"), "x")
    assert "" in restored and restored.get("") == 0 and len(restored) == 2
    assert restored.ids == ["", None, "b"]
    assert restored.add("c") == live.add("c") == 1
    assert restored.add("d") == 3  # not row 0: "" still holds it


def test_a_snapshot_without_free_rows_loads_as_before() -> None:
    # Snapshots written before "x.free": a freed row is an empty string, lowest reused first.
    index = IdIndex(["a", "b", "c", "d"])
    for k in ("b", "d"):
        index.remove(k)
    arrays = index.to_arrays("x")
    old = IdIndex.from_arrays({k: v for k, v in arrays.items() if k != "x.free"}, "x")
    assert old.ids == ["a", None, "c", None] and len(old) == 2
    assert [old.add("e"), old.add("f"), old.add("g")] == [1, 3, 4]


def test_growth_and_tombstone_sweeps_keep_every_id_reachable() -> None:
    # Many adds (table rebuilds as it grows) and removals with re-adds (tombstones in
    # the chains, reused or swept by a rebuild), against a dict.
    rng = np.random.default_rng(3)
    index, model = IdIndex(), {}  # type: ignore[var-annotated]
    keys = [f"k{i}" for i in range(30_000)]
    for step in range(60):
        batch = [keys[i] for i in rng.integers(0, len(keys), 1_000)]
        for k, row in zip(batch, index.add_many(batch).tolist(), strict=True):
            assert model.setdefault(k, row) == row
        for k in rng.choice(sorted(model), min(len(model), 300), replace=False).tolist():
            index.remove(k)
            del model[k]
        if step % 10 == 9:
            index._rehash(len(index._slots))  # a sweep without growth
        assert len(index) == len(model)
    probe = keys[:5_000]
    assert index.rows(probe).tolist() == [model.get(k, -1) for k in probe]
    assert [index.get(k) for k in probe] == [model.get(k, -1) for k in probe]


@given(st.lists(st.text(max_size=6) | st.text(alphabet="abc019_-", max_size=8), max_size=40))
def test_packed_strings_round_trip(strings: list[str]) -> None:
    """ASCII-only lists take the encode- and decode-once paths, others the per-string
    ones; both write the same layout: UTF-8 bytes end to end, each string's end."""
    data, ends = pack_strings(strings)
    assert data.tobytes() == "".join(strings).encode()
    assert ends.tolist() == np.cumsum([len(s.encode()) for s in strings]).tolist()
    assert data.dtype == np.uint8 and ends.dtype == np.int64 and data.flags.writeable
    assert unpack_strings(data, ends) == strings


def test_freed_and_reused_rows_are_spliced_into_the_last_packing() -> None:
    """Between two snapshots a trainer bounding its users frees and reuses rows: the
    next packing splices them in (ids of other lengths, non-ASCII too) and equals
    packing every row."""
    index = IdIndex([f"user-{i}" for i in range(1000)])
    index.to_arrays("x")
    for i in range(0, 1000, 20):  # 50 freed rows, 20 of them then reused
        index.remove(f"user-{i}")
    index.add_many([f"ü{'x' * (i % 7)}-{i}" for i in range(20)] + ["user-new"])
    assert 0 < len(index._dirty) <= 1000 // 8  # the splice, not a full repack
    got = index.to_arrays("x")
    data, ends = pack_strings(["" if k is None else k for k in index.ids])
    np.testing.assert_array_equal(got["x.data"], data)
    np.testing.assert_array_equal(got["x.offsets"], ends)
    assert unpack_strings(got["x.data"], got["x.offsets"]) == \
        ["" if k is None else k for k in index.ids]


def test_changed_since_lists_freed_and_reused_rows_until_the_log_is_cut() -> None:
    idx = IdIndex(["a", "b", "c", "d"])
    idx.CHANGE_LOG = 4
    g0 = idx.generation
    idx.remove("b")
    idx.add("e")  # reuses b's row
    g2 = idx.generation
    assert idx.changed_since(g0) == [1, 1]
    assert idx.changed_since(g2) == []
    idx.add("f")  # a new row: not a change
    assert idx.generation == g2
    for k in ("a", "c", "d"):
        idx.remove(k)  # five changes: the log keeps the last ones only
    assert idx.changed_since(g0) is None  # too old: everything may have changed
    assert idx.changed_since(idx.generation - 1) == [3]
    assert idx.changed_since(idx.generation + 1) is None  # not this index's
