"""Serving latency per model, the neural ones beside the default mix, in one run.

Issue 14 asks that the neural sequence model's snapshot/serving path keep the serving
latency figures. This learns a model mix on a real stream in memory (the shared data
sets through their preset, item features included), writes one snapshot of it with
``SnapshotStore``, starts ``liverec serve`` on it in its own process and measures, with
the open-loop load generator of ``bench_serving.py`` (its own process, latency from
each request's due time):

0. in process, one thread, no load: each model's ``LoadedSnapshot.recommend`` time
   (the service time of one request; a model whose service time is above
   ``1 / --rate`` cannot hold that rate on one interpreter);
1. ``/healthz`` at ``--rate`` req/s (the floor);
2. ``/v1/recommendations?model=M`` at the same rate for each ``--serve`` model, on
   users that have history (so every request ranks the catalogue), in turns;
3. ``/healthz`` again.

Each model's ratio is its p99 over the worse of the two ``/healthz`` p99s. It also
prints each model's share of the snapshot's bytes and the server's own ranking time
per model (``liverec_serving_rank_duration_seconds``, mean).

Run (MovieLens whole file, ~5 minutes on 2 cores, most of it learning)::

    .venv/bin/python bench/bench_serving_models.py \\
        ../shared/data/movielens-small/ratings.csv --preset movielens
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import REPO, Server, load, ms, pct, run_load

from online_models import registry
from online_models.base import UserHistory, learning_order
from online_models.content import load_item_features
from online_models.datasets import read_interactions, to_batches
from online_models.snapshot import SnapshotStore
from serving.live import LiveContext
from serving.ranking import LoadedSnapshot

#: the default mix, plus the neural and content models and a re-ranker over six
#: components (``seqnn`` among them), as in BENCHMARKS.md "Deep models"
DEFAULT_MODELS = ("popularity,itemknn,userknn,bpr,embedding,sequence,hybrid,"
                  "sknn,seqnn,content-knn,ranked")
SIX = ["popularity", "itemknn", "sequence", "sknn", "seqnn", "content-knn"]
DEFAULT_SERVE = "popularity,itemknn,hybrid,seqnn,ranked"


def learn(path: Path, preset: str, limit: int | None, names: list[str],
          batch_size: int) -> tuple[dict[str, Any], UserHistory, list[str], int, float]:
    """The models of ``names`` after learning the stream's first ``limit`` events, the
    users' histories (200 items each, the trainer's default), the users in order of
    first appearance, the number of events and the last event time."""
    ds = read_interactions(path, preset)
    if limit:
        ds = ds[:limit]
    params = {"ranked": {"components": SIX}} if "ranked" in names else {}
    models = registry.create_models(names, params)
    features = load_item_features(path, preset)
    registry.give_item_features(models, features)
    history = UserHistory()
    order = learning_order(models)
    watermark = 0.0
    users: dict[str, None] = {}
    for batch in tqdm(to_batches(ds, batch_size), total=-(-len(ds) // batch_size),
                      unit="batch", desc="learning", leave=False):
        history.extend(batch.users, batch.items)
        users.update(dict.fromkeys(batch.users))
        for name in order:
            models[name].learn(batch)
        watermark = float(np.max(batch.timestamps))
    return models, history, list(users), len(ds), watermark


def service_times(store: SnapshotStore, serve: list[str], users: list[str],
                  n: int) -> dict[str, dict[str, float]]:
    """Each model's ``recommend`` time in this process, one thread, ``n`` users."""
    loaded = LoadedSnapshot(store.load())
    live = LiveContext()
    out: dict[str, dict[str, float]] = {}
    for m in serve:
        lat = []
        for u in users[:n]:
            t = time.perf_counter()
            loaded.recommend(u, 10, m, live=live)
            lat.append(time.perf_counter() - t)
        out[m] = {"p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)),
                  "mean_ms": ms(sum(lat) / len(lat))}
        print(f"  in process {m:<12} p50 {out[m]['p50_ms']:7.2f}  p99 "
              f"{out[m]['p99_ms']:7.2f}  mean {out[m]['mean_ms']:7.2f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path, help="interactions file of a preset data set")
    ap.add_argument("--preset", required=True, help="movielens or online-retail")
    ap.add_argument("--limit", type=int, default=None, help="first N events (default all)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="models in the snapshot")
    ap.add_argument("--serve", default=DEFAULT_SERVE, help="models to query, in turns")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="per load phase")
    ap.add_argument("--users", type=int, default=2000, help="distinct users queried")
    ap.add_argument("--inprocess-users", type=int, default=300,
                    help="requests per model in the in-process phase")
    ap.add_argument("--out", type=Path,
                    default=REPO / "bench" / "results" / "serving-models.json")
    args = ap.parse_args(argv)
    names = registry.parse_models(args.models)
    serve = [s.strip() for s in args.serve.split(",") if s.strip()]
    missing = sorted(set(serve) - set(names))
    if missing:
        ap.error(f"--serve names models not in --models: {missing}")

    t0 = time.perf_counter()
    models, history, users, n, watermark = learn(args.path, args.preset, args.limit,
                                                 names, args.batch_size)
    print(f"learned {n} events, {len(names)} models in {time.perf_counter() - t0:.0f} s",
          flush=True)
    users = sorted(users)
    random.Random(0).shuffle(users)
    users = users[: args.users]
    out: dict[str, Any] = {"dataset": str(args.path), "preset": args.preset, "events": n,
                           "models": names, "rate": args.rate, "seconds": args.seconds,
                           "users": len(users), "phases": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = SnapshotStore(tmp / "snapshots")
        info = store.write(models, history=history, offsets={}, events_total=n,
                           watermark=watermark)
        sizes: dict[str, int] = {}
        for f in info.path.iterdir():  # model-<name>.safetensors, state, manifest
            part = f.name.split(".", 1)[0].removeprefix("model-")
            sizes[part] = sizes.get(part, 0) + f.stat().st_size
        out["snapshot_bytes"] = sizes
        print(f"snapshot v{info.version}: {sum(sizes.values()) / 1e6:.1f} MB "
              f"({', '.join(f'{k} {v / 1e6:.1f}' for k, v in sorted(sizes.items()))})",
              flush=True)
        out["inprocess"] = service_times(store, serve, users, args.inprocess_users)
        server = Server(store.root, {"LIVEREC_RELOAD_INTERVAL_S": "5"})
        try:
            phases = out["phases"]
            phases["healthz"] = run_load(server.base, ["/healthz"], args.rate,
                                         args.seconds, tmp)
            for m in serve:
                paths = [f"/v1/recommendations?user_id={u}&k=10&model={m}" for u in users]
                phases[m] = run_load(server.base, paths, args.rate, args.seconds, tmp)
                phases[m]["load"] = load()
                name = "liverec_serving_rank_duration_seconds"
                spent = server.metric(f"{name}_sum", {"model": m})
                calls = max(1.0, server.metric(f"{name}_count", {"model": m}))
                phases[m]["server_rank_mean_ms"] = round(1e3 * spent / calls, 3)
                print(f"  {m:<12} p50 {phases[m]['p50_ms']:7.2f}  p99 {phases[m]['p99_ms']:7.2f}"
                      f" ms  failures {phases[m]['failures']}  (load {phases[m]['load'][0]})",
                      flush=True)
            phases["healthz_after"] = run_load(server.base, ["/healthz"], args.rate,
                                               args.seconds, tmp)
        finally:
            server.close()
    floor = max(out["phases"]["healthz"]["p99_ms"], out["phases"]["healthz_after"]["p99_ms"])
    out["healthz_p99_ms"] = floor
    print(f"/healthz p99 {out['phases']['healthz']['p99_ms']:.2f} / "
          f"{out['phases']['healthz_after']['p99_ms']:.2f} ms")
    print(f"{'model':<12}{'alone p50':>10}{'alone p99':>10}{'p50 ms':>9}{'p90 ms':>9}"
          f"{'p99 ms':>9}{'p99 / healthz':>15}{'rank ms':>9}{'failed':>8}")
    for m in serve:
        ph = out["phases"][m]
        ph["ratio_p99"] = round(ph["p99_ms"] / floor, 2) if floor else None
        alone = out["inprocess"][m]
        print(f"{m:<12}{alone['p50_ms']:>10.2f}{alone['p99_ms']:>10.2f}{ph['p50_ms']:>9.2f}{ph['p90_ms']:>9.2f}{ph['p99_ms']:>9.2f}"
              f"{ph['ratio_p99'] or float('nan'):>15.2f}{ph['server_rank_mean_ms']:>9.3f}"
              f"{ph['failures']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
