"""Snapshot write/load time for a large item table (default 1M items x 64 dims).

Run: ``.venv/bin/python bench/bench_snapshot.py --items 1000000 --dim 64 --repeat 5``

The model is a plain embedding table with its item id index, registered under a
bench-only name, so the figure is the snapshot machinery (safetensors encode,
SHA-256, fsync, rename, LATEST) and not any one model's ``get_state``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory
from online_models.snapshot import SnapshotStore


class TableModel(OnlineModel):
    """An item-embedding table and nothing else."""

    name = "bench-table"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.items = IdIndex()
        self.users = IdIndex()
        self.table = np.zeros((0, dim), np.float32)

    def learn(self, batch: Batch) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return np.zeros(self.items.capacity, np.float32)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        return []

    def get_state(self) -> ModelState:
        arrays = {"table": self.table, **self.items.to_arrays("items")}
        return ModelState(arrays, {"class": self.name, "params": self.get_params()})

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**state.meta["params"])
        m.items = IdIndex.from_arrays(state.arrays, "items")
        m.table = state.arrays["table"]
        return m


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args(argv)

    registry.MODEL_PATHS["bench-table"] = f"{__name__}:TableModel"
    sys.modules.setdefault(__name__, sys.modules["__main__"])
    rng = np.random.default_rng(0)
    model = TableModel(args.dim)
    model.items = IdIndex(f"item-{i}" for i in range(args.items))
    model.table = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    history = UserHistory()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = SnapshotStore(Path(tmp), keep=2)
        writes, loads, states, size = [], [], [], 0
        for n in range(args.repeat):
            info = store.write(
                {"table": model},
                history=history,
                offsets={"clicks": {0: n}},
                events_total=n,
                watermark=None,
            )
            writes.append(info.seconds)
            t0 = time.perf_counter()
            model.get_state()
            states.append(time.perf_counter() - t0)
            size = info.bytes
            t0 = time.perf_counter()
            store.load(info.version)
            loads.append(time.perf_counter() - t0)
    print(
        f"snapshot {args.items} x {args.dim} ({size / 1e6:.0f} MB): "
        f"write median {statistics.median(writes):.3f} s (min {min(writes):.3f}; "
        f"of which get_state {statistics.median(states):.3f} s), "
        f"verified load median {statistics.median(loads):.3f} s, repeats={args.repeat}"
    )


if __name__ == "__main__":
    main()
