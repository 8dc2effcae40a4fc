"""What a followed seqnn adds to the hybrid, and what its staleness costs (in memory).

``liverec train --follow seqnn=DIR`` blends a ``seqnn`` that another trainer learns:
the main trainer's hybrid sees a copy as of that trainer's latest snapshot, some
events behind the stream. This replays a data set prequentially (the protocol of
``liverec evaluate``: test-then-train per mini-batch, K=10, history excluded) with

* the count models ``popularity, itemknn, sequence, sknn`` learned every batch and
  shared by every hybrid;
* ``seqnn`` learned every batch (lag 0: as if it learned in the main trainer);
* per ``--lags`` value R, a followed copy ``seqnn@lagR``: every R events it is
  replaced by the copy of the live ``seqnn`` taken R events earlier (through
  ``get_state`` / ``from_state``, as a snapshot carries it), so it is R to 2R events
  behind, and it never learns;
* ``hybrid`` over the four count models and ``hybrid+seqnn@...`` over the four plus
  one of the seqnn copies (bound, as the trainer binds them).

It prints HR@10 over all evaluated events, the first ``--tune-frac`` of the stream and
the rest, and each hybrid's final weight on its seqnn. At 1,000 events/s, R = 5,000
means a followed version 5-10 s old.

Example::

    .venv/bin/python bench/bench_follow_accuracy.py ../shared/data/movielens-small/ratings.csv \\
        --preset movielens --lags 500 2000 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from online_models import registry
from online_models.base import OnlineModel, learning_order
from online_models.content import load_item_features
from online_models.datasets import read_interactions, to_batches
from online_models.evaluation import PrequentialEvaluator

COUNTS = ["popularity", "itemknn", "sequence", "sknn"]


def _copy(model: OnlineModel) -> OnlineModel:
    return registry.from_state(model.get_state())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--lags", type=int, nargs="+", default=[2000, 10000],
                    help="events between followed versions (each is that far behind)")
    ap.add_argument("--seqnn-params", default="{}",
                    help='JSON constructor arguments of seqnn, e.g. {"learning_rate": 0.001}')
    ap.add_argument("--no-features", action="store_true",
                    help="no item content for seqnn (default: the data file's, by the preset)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tune-frac", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG of HR@10 against the lag (with --from-json: of that run)")
    ap.add_argument("--from-json", action="store_true",
                    help="do not run: read --json and draw --plot from it")
    args = ap.parse_args(argv)
    if args.from_json:
        report = json.loads(args.json.read_text())
        plot(report, args.plot)
        return report  # type: ignore[no-any-return]
    torch.set_num_threads(1)

    ds = read_interactions(args.path, args.preset)
    if args.limit:
        ds = ds[: args.limit]
    seqnn_params = json.loads(args.seqnn_params)
    models: dict[str, OnlineModel] = {n: registry.create(n) for n in COUNTS}
    models["seqnn"] = registry.create("seqnn", **seqnn_params)
    if not args.no_features:  # as bench_deep.py gives them; copies carry them in their state
        models["seqnn"].set_item_features(  # type: ignore[attr-defined]
            load_item_features(args.path, args.preset))
    followed = {f"seqnn@lag{r}": r for r in args.lags}
    for name in followed:
        models[name] = registry.create("seqnn", **seqnn_params)  # empty until the first copy
    hybrids = {"hybrid": COUNTS, "hybrid+seqnn@lag0": [*COUNTS, "seqnn"]}
    hybrids.update({f"hybrid+{n}": [*COUNTS, n] for n in followed})
    for h, comps in hybrids.items():
        models[h] = registry.create("hybrid", components=comps)
    _bind(models, hybrids)
    ev = PrequentialEvaluator(models, k=10)
    pending: dict[str, OnlineModel | None] = dict.fromkeys(followed)
    n_tune = int(args.tune_frac * len(ds))
    hits: dict[str, list[np.ndarray]] = {n: [] for n in models}
    tune: list[np.ndarray] = []
    seen = 0
    t0 = time.perf_counter()
    for batch in tqdm(to_batches(ds, args.batch_size), total=-(-len(ds) // args.batch_size),
                      unit="batch", leave=False):
        out = ev.process(batch, learn=False)
        tune.append(seen + out.positions < n_tune)
        for n in models:
            hits[n].append(out.models[n].hits)
        for n in learning_order({k: v for k, v in models.items() if k not in followed}):
            models[n].learn(batch)
        before, seen = seen, seen + len(batch)
        for name, lag in followed.items():
            if seen // lag != before // lag:  # a new version: the one taken a lag ago
                ready = pending[name]
                pending[name] = _copy(models["seqnn"])
                if ready is not None:
                    models[name] = ready
                    ev.replace_model(name, ready)
                    _bind(models, hybrids)
    in_tune = np.concatenate(tune)
    report: dict[str, Any] = {"data": str(args.path), "events": len(ds),
                              "evaluated": len(in_tune), "lags": args.lags,
                              "seqnn_params": seqnn_params, "models": {},
                              "seconds": time.perf_counter() - t0}
    print(f"{'model':<24}{'HR@10':>8}{'first':>8}{'rest':>8}  weight on its seqnn")
    for n in models:
        h = np.concatenate(hits[n]).astype(np.float64)
        row = {"hr": float(h.mean()), "hr_tune": float(h[in_tune].mean()),
               "hr_rest": float(h[~in_tune].mean())}
        weights = getattr(models[n], "weights", None)
        if weights is not None:
            row["seqnn_weight"] = sum(w for c, w in weights.items() if c.startswith("seqnn"))
        report["models"][n] = row
        extra = f"  {row['seqnn_weight']:.2f}" if "seqnn_weight" in row else ""
        print(f"{n:<24}{row['hr']:8.4f}{row['hr_tune']:8.4f}{row['hr_rest']:8.4f}{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, args.plot)
    return report


def plot(report: dict[str, Any], out: Path) -> None:
    """HR@10 of the hybrid with its seqnn, and of that seqnn alone, against the lag;
    the hybrid without seqnn and item-kNN as flat lines (whole stream and the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["models"]
    lags = [0, *report["lags"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharex=True)
    for ax, key, title in ((axes[0], "hr", "whole stream"),
                           (axes[1], "hr_rest", "after the first 30%")):
        ax.plot(lags, [m[f"hybrid+seqnn@lag{r}"][key] for r in lags], "o-",
                label="hybrid + followed seqnn")
        ax.plot(lags, [m["seqnn" if r == 0 else f"seqnn@lag{r}"][key] for r in lags], "s-",
                label="followed seqnn alone")
        ax.axhline(m["hybrid"][key], color="grey", linestyle="--", label="hybrid without seqnn")
        ax.axhline(m["itemknn"][key], color="grey", linestyle=":", label="item-kNN")
        ax.set_xscale("symlog", linthresh=500)
        ax.set_xlabel("events the followed seqnn is behind (R to 2R)")
        ax.set_ylabel("HR@10")
        ax.set_title(f"{Path(report['data']).name}: {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _bind(models: dict[str, OnlineModel], hybrids: dict[str, list[str]]) -> None:
    for h, comps in hybrids.items():
        bound = models[h].bind({c: models[c] for c in comps})  # type: ignore[attr-defined]
        assert sorted(bound) == sorted(comps), (h, bound)


if __name__ == "__main__":
    main()
