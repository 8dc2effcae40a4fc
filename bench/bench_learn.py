"""Learning throughput of every model on one core, next to River FunkMF's ``learn_one``.

Run::

    .venv/bin/python bench/bench_learn.py --events 200000 --json bench/results/learn.json

Every model learns the same seeded synthetic stream in mini-batches of ``--batch-size``
(64 latent dimensions where a model has them). The first ``--warmup`` share of the
stream is learned untimed (allocations, id growth, torch warm-up); the rest is timed.
In the same run, River's ``reco.FunkMF.learn_one`` is timed on the same events one by
one (the raw per-event rate, without our wrapper's negative sampling), and every
model's rate is reported as a multiple of it. Thread pools are pinned to one thread
before numpy/torch load, and rates are events per second of *process CPU time*
(``time.process_time``), so they are per core and stay meaningful on a shared,
loaded machine where wall-clock rates would measure the neighbours.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from online_models import registry  # noqa: E402
from online_models.datasets import Dataset, to_batches  # noqa: E402
from online_models.synthetic import generate_events  # noqa: E402

DIM = 64
#: constructor arguments that set the latent width, per model
DIM_PARAMS: dict[str, dict[str, Any]] = {
    "bpr": {"n_factors": DIM},
    "embedding": {"dim": DIM},
    "river-funkmf": {"n_factors": DIM},
    "river-biasedmf": {"n_factors": DIM},
}
TARGETS = {"itemknn": 100_000, "bpr": 100_000, "embedding": 30_000}


def river_learn_one_rate(ds: Dataset, start: int, seconds: float) -> float:
    """Events/s of raw ``river.reco.FunkMF.learn_one`` on the stream's events."""
    from river import optim, reco

    model = reco.FunkMF(n_factors=DIM, optimizer=optim.SGD(0.05), seed=0)
    for u, i in zip(ds.users[:start], ds.items[:start], strict=True):
        model.learn_one(u, i, 1.0)
    n = 0
    t0 = time.process_time()
    users, items = ds.users[start:], ds.items[start:]
    while n < len(users):
        model.learn_one(users[n], items[n], 1.0)
        n += 1
        if n % 1000 == 0 and time.process_time() - t0 > seconds:
            break
    return n / (time.process_time() - t0)


def model_rate(name: str, ds: Dataset, start: int, batch_size: int, seconds: float) -> float:
    model = registry.create(name, **DIM_PARAMS.get(name, {}))
    for b in to_batches(ds[:start], batch_size):
        model.learn(b)
    n = 0
    t0 = time.process_time()
    for b in to_batches(ds[start:], batch_size):
        model.learn(b)
        n += len(b)
        # Slow baselines stop early: their rate is stable long before the end.
        if time.process_time() - t0 > seconds:
            break
    return n / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="CPU seconds cap per model")
    ap.add_argument("--models", default="all,river-funkmf,river-biasedmf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(1)
    names: list[str] = []
    for part in args.models.split(","):
        for n in registry.parse_models(part) if part.strip() == "all" else [part.strip()]:
            if n not in names:
                names.append(n)

    ds = Dataset.from_records(
        generate_events(args.events, args.users, args.items, seed=args.seed), name="synthetic"
    )
    start = int(len(ds) * args.warmup)
    river_rate = river_learn_one_rate(ds, start, args.max_seconds)
    print(f"stream: {len(ds)} events, {ds.n_users} users, {ds.n_items} items")
    print(f"{'model':<16}{'events/s':>12}{'x river':>10}{'target':>16}")
    print(f"{'river learn_one':<16}{river_rate:>12,.0f}{1.0:>10.1f}{'':>16}")
    rows: dict[str, dict[str, float]] = {}
    for name in names:
        rate = model_rate(name, ds, start, args.batch_size, args.max_seconds)
        target = TARGETS.get(name)
        rows[name] = {"events_per_s": rate, "x_river_learn_one": rate / river_rate}
        mark = "" if target is None else (f"{target:,}" + (" ok" if rate >= target else " MISS"))
        print(f"{name:<16}{rate:>12,.0f}{rate / river_rate:>10.1f}{mark:>16}")
    # Also against the river-funkmf *model* (learn_one per event plus its negatives),
    # the like-for-like implicit-feedback learner.
    if "river-funkmf" in rows:
        wrapped = rows["river-funkmf"]["events_per_s"]
        for row in rows.values():
            row["x_river_funkmf_model"] = row["events_per_s"] / wrapped
        print(
            "x river-funkmf model: "
            + ", ".join(f"{n} {r['x_river_funkmf_model']:.1f}" for n, r in rows.items())
        )

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": " ".join(sys.argv),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1},
            "clock": "process_time",
            "events": len(ds),
            "batch_size": args.batch_size,
            "dim": DIM,
            "river_learn_one_events_per_s": river_rate,
            "models": rows,
        }
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
