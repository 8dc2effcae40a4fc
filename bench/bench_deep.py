"""Prequential HR@10 of the deep / content models next to the baselines, with cold-start splits.

Runs :class:`online_models.evaluation.PrequentialEvaluator` (the protocol of
``liverec evaluate``: test-then-train per mini-batch, K=10, history excluded) on a
preset data set, gives item features to every model that takes them
(``set_item_features``), times each model's ``learn`` and reports HR@10:

* over all evaluated events, over those in the first ``--tune-frac`` of the stream
  (where hyperparameters were chosen) and over the rest;
* on events whose item had fewer than 5 prior interactions (cold items) and whose
  user had fewer than 5 prior events (cold users), with the ratio to popularity;
* for click models (``ranked``), a sampled AUC (``sampled_auc``): in every
  ``--auc-every``-th batch (20) the first ``--auc-positives`` (64) *evaluable* events --
  the ones HR@10 evaluates: not an unknown item, a user's first event or a repeat --
  each against 20 random items the model knows (not the positive, not the user's
  history), scored before the batch is learnt; the pairs of all sampled batches are
  pooled, and the report gives the positives and the pairs (negatives) it rests on
  (``auc_positives``, ``auc_negatives``) and the sampled events left out by reason.

Example::

    .venv/bin/python bench/bench_deep.py ../shared/data/movielens-small/ratings.csv \\
        --preset movielens --models popularity,itemknn,seqnn,content-knn --limit 30000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from liverec.provenance import code_provenance, model_hyperparameters
from online_models import registry
from online_models.click_auc import AUC_EVERY, AUC_POSITIVES, BatchAUC, SampledAUC
from online_models.content import load_item_features
from online_models.datasets import read_interactions, to_batches
from online_models.evaluation import PrequentialEvaluator

COLD = 5


def _params(spec: list[str]) -> dict[str, dict[str, Any]]:
    """``model.param=value`` (JSON value) -> {model: {param: value}}.

    Raises ValueError on a setting that is not of that form.

    >>> _params(["seqnn@s6.steps_per_batch=6", 'hybrid.components=["popularity"]'])
    {'seqnn@s6': {'steps_per_batch': 6}, 'hybrid': {'components': ['popularity']}}
    """
    out: dict[str, dict[str, Any]] = {}
    for s in spec:
        key, eq, val = s.partition("=")
        model, dot, param = key.rpartition(".")
        if not eq or not dot or not model or not param:
            raise ValueError(f"{s!r} is not model.param=value")
        try:
            parsed = json.loads(val)
        except json.JSONDecodeError:
            parsed = val
        out.setdefault(model, {})[param] = parsed
    return out


def _report(args: argparse.Namespace, ds: Any, n_tune: int, params: dict[str, Any],
            names: list[str], models: dict[str, Any], hits: dict[str, list[np.ndarray]],
            flags: dict[str, list[np.ndarray]], learn_s: dict[str, float], seen: int,
            aucs: dict[str, SampledAUC]) -> dict[str, Any]:
    f = {k: np.concatenate(v) for k, v in flags.items()}
    report: dict[str, Any] = {
        "dataset": str(args.path), "preset": args.preset, "events": len(ds),
        "limit": args.limit, "tie_order": ds.tie_order, "events_done": seen,
        "partial": seen < len(ds),
        "batch_size": args.batch_size, "k": args.k,
        "tune_events": n_tune, "params": params,
        "code": code_provenance(), "hyperparameters": model_hyperparameters(models),
        "evaluated": len(f["tune"]), "cold_item_events": int(f["cold_item"].sum()),
        "cold_user_events": int(f["cold_user"].sum()), "models": {},
    }
    for n in names:
        h = np.concatenate(hits[n]).astype(np.float64)

        def mean(mask: np.ndarray, h: np.ndarray = h) -> float:
            return float(h[mask].mean()) if mask.any() else float("nan")

        report["models"][n] = {
            "hr": mean(np.ones_like(f["tune"])),
            "hr_tune": mean(f["tune"]),
            "hr_rest": mean(~f["tune"]),
            "hr_cold_item": mean(f["cold_item"]),
            "hr_cold_user": mean(f["cold_user"]),
            "learn_events_per_s": seen / learn_s[n] if learn_s[n] else 0.0,
        }
        if n in aucs:
            a = aucs[n]
            report["models"][n].update({
                "auc": a.auc, "auc_positives": a.positives, "auc_negatives": a.negatives,
                "auc_excluded": dict(a.excluded),
            })
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.epilog = ("AUC (models with click_proba): every --auc-every-th batch, its first "
                 "--auc-positives events that HR@K evaluates (not unknown items, first "
                 "user events or repeats), each against 20 random known items, before "
                 "learning; pooled over pairs and reported with its positive and "
                 "negative counts.")
    ap.add_argument("path", type=Path)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--models", default="popularity,itemknn,seqnn,content-knn")
    ap.add_argument("--features", type=Path, default=None,
                    help="item features file (default: the data file through the preset)")
    ap.add_argument("--no-features", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--tie-order", choices=("file", "hash"), default=None,
                    help="order of events with equal timestamps (default: the preset's; "
                         "'file' reproduces MovieLens figures measured before 2026-12-07)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tune-frac", type=float, default=0.3)
    ap.add_argument("--param", action="append", default=[],
                    help="model.param=value (JSON), e.g. seqnn.steps_per_batch=6")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report-every", type=int, default=50,
                    help="also write the JSON (partial) every N batches")
    ap.add_argument("--auc-every", type=int, default=AUC_EVERY,
                    help="sample the AUC in every N-th batch (0: no AUC)")
    ap.add_argument("--auc-positives", type=int, default=AUC_POSITIVES,
                    help="evaluable events of a sampled batch scored as AUC positives")
    args = ap.parse_args(argv)
    if args.auc_every < 0 or args.auc_positives < 1:
        ap.error("--auc-every must be >= 0 (0: no AUC) and --auc-positives >= 1")
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    if not names:
        ap.error("--models names no model")
    try:
        for n in names:
            registry.model_class(n.split("@")[0])  # an unknown name: the known ones
    except ValueError as exc:
        ap.error(f"--models: {exc}")
    try:
        params = _params(args.param)
        registry.check_params(params, names)  # models evaluated, constructor arguments
    except ValueError as exc:
        ap.error(f"--param {exc}")

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        ds = read_interactions(args.path, args.preset, tie_order=args.tie_order)
    except (ValueError, OSError) as exc:  # an unknown preset, a missing column or file
        ap.error(str(exc))
    if args.limit:
        ds = ds[: args.limit]
    features = None
    if not args.no_features:
        features = load_item_features(args.features or args.path, args.preset)
    print(f"{args.path}: {len(ds)} events, {ds.n_items} items, features for "
          f"{0 if features is None else len(features)} items "
          f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)

    # "seqnn@s6" is another instance of "seqnn", configured by --param seqnn@s6.x=...
    try:
        models = {n: registry.create(n.split("@")[0], **params.get(n, {})) for n in names}
    except (TypeError, ValueError) as exc:  # a value the constructor refuses
        ap.error(f"--param: {exc}")
    for m in models.values():
        # A Hybrid does not forward features (yet): give them to its components here.
        for target in [m, *getattr(m, "models", {}).values()]:
            if features is not None and hasattr(target, "set_item_features"):
                target.set_item_features(features)
    ev = PrequentialEvaluator(models, k=args.k)
    learn_s = dict.fromkeys(names, 0.0)
    n_tune = int(args.tune_frac * len(ds))
    item_n: dict[str, int] = {}
    user_n: dict[str, int] = {}
    hits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    flags: dict[str, list[np.ndarray]] = {"tune": [], "cold_item": [], "cold_user": []}
    seen = 0
    aucs = BatchAUC(models, args.auc_every, args.auc_positives)
    for batch in tqdm(to_batches(ds, args.batch_size), total=-(-len(ds) // args.batch_size),
                      unit="batch", leave=False):
        prior_i = np.empty(len(batch), np.int64)
        prior_u = np.empty(len(batch), np.int64)
        for p, (u, i) in enumerate(zip(batch.users, batch.items, strict=True)):
            prior_i[p] = item_n.get(i, 0)
            prior_u[p] = user_n.get(u, 0)
            item_n[i] = prior_i[p] + 1
            user_n[u] = prior_u[p] + 1
        aucs.sample(batch, ev, seed=seen)  # before anything learns the batch
        out = ev.process(batch, learn=False)
        pos = out.positions
        flags["tune"].append(seen + pos < n_tune)
        flags["cold_item"].append(prior_i[pos] < COLD)
        flags["cold_user"].append(prior_u[pos] < COLD)
        for n in names:
            hits[n].append(out.models[n].hits)
            t = time.perf_counter()
            models[n].learn(batch)
            learn_s[n] += time.perf_counter() - t
        seen += len(batch)
        if args.json and args.report_every and (seen // args.batch_size) % args.report_every == 0:
            part = _report(args, ds, n_tune, params, names, models, hits, flags, learn_s, seen,
                           aucs.totals)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(part, indent=2))

    report = _report(args, ds, n_tune, params, names, models, hits, flags, learn_s, seen,
                     aucs.totals)
    pop = report["models"].get("popularity")
    print(f"{'model':<14}{'HR@10':>8}{'first':>8}{'rest':>8}{'cold-i':>8}{'x pop':>7}"
          f"{'cold-u':>8}{'learn ev/s':>12}")
    for n, r in report["models"].items():
        ratio = r["hr_cold_item"] / pop["hr_cold_item"] if pop and pop["hr_cold_item"] else 0
        print(f"{n:<14}{r['hr']:8.4f}{r['hr_tune']:8.4f}{r['hr_rest']:8.4f}"
              f"{r['hr_cold_item']:8.4f}{ratio:7.2f}{r['hr_cold_user']:8.4f}"
              f"{r['learn_events_per_s']:12,.0f}" + (
                  f"  auc {r['auc']:.3f} over {r['auc_positives']:,} positives, "
                  f"{r['auc_negatives']:,} negatives" if "auc" in r else ""))
    print(f"evaluated {report['evaluated']} ({report['cold_item_events']} cold-item, "
          f"{report['cold_user_events']} cold-user); first {n_tune} events = tuning part")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
