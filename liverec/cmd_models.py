"""`liverec generate` and `liverec evaluate` (registered by :mod:`liverec.cli`).

Heavy modules (numpy, torch, matplotlib, the models) are imported inside the
commands so that ``liverec --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from online_models.uncertainty import UserHits


def generate(
    out: Annotated[Path, typer.Option("--out", help="CSV to write (.gz for gzip).")],
    events: Annotated[int, typer.Option("--events", min=0, help="Number of events.")] = 100_000,
    users: Annotated[int, typer.Option("--users", min=1, help="Number of users.")] = 1_000,
    items: Annotated[int, typer.Option("--items", min=1, help="Catalogue size.")] = 2_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    drift_at: Annotated[
        int | None,
        typer.Option("--drift-at", min=0, help="Event index where tastes and popularity shift."),
    ] = None,
    start_ts: Annotated[
        float, typer.Option("--start-ts", help="Epoch seconds of the first event.")
    ] = 1_704_067_200.0,
    events_per_s: Annotated[
        float, typer.Option("--events-per-s", min=0.001, help="Mean event-time rate.")
    ] = 5.0,
) -> None:
    """Write a synthetic click stream with planted structure (the `liverec` CSV)."""
    from tqdm import tqdm

    from online_models.synthetic import iter_events, write_csv

    stream = iter_events(events, users, items, seed, drift_at, start_ts=start_ts,
                         events_per_s=events_per_s)
    n = write_csv(tqdm(stream, total=events, unit="ev", desc="generate", leave=False), out)
    drift = f", drift at event {drift_at}" if drift_at is not None else ""
    typer.echo(f"wrote {n} events ({users} users, {items} items, seed {seed}{drift}) to {out}")


def _model_params(text: str | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """``--model-params`` parsed and checked against the listed models and their
    constructor arguments (:func:`online_models.registry.check_params`)."""
    import orjson

    if text is None:
        return {}
    try:
        params = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"--model-params is not JSON: {exc}") from exc
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise typer.BadParameter('--model-params must be {"model": {"param": value}}')
    from online_models import registry

    try:
        registry.check_params(params, names)
    except ValueError as exc:
        raise typer.BadParameter(f"--model-params {exc}") from exc
    return params


def _share(value: float, hint: str) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}", param_hint=hint)
    return value


def event_types_option(value: str | None) -> dict[str, str] | None:
    """``--event-types`` parsed (evaluate, replay); a bad pair is a usage error."""
    from online_models.datasets import parse_event_types

    try:
        return None if value is None else parse_event_types(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--event-types") from exc


def invalid_rows_line(ds: Any) -> str:
    """What a dataset's invalid rows were, by reason, with the first and a hint."""
    from collections import Counter

    from online_models.datasets import EVENT_TYPES

    n, total = len(ds.invalid), len(ds.invalid) + len(ds) + sum(ds.skipped.values())
    reasons = Counter(row.reason for row in ds.invalid)
    line = (f"warning: {n:,} of {total:,} rows ({n / total:.1%}) are invalid and left out: "
            + ", ".join(f"{count:,} {why}" for why, count in reasons.most_common())
            + f" (first: {ds.invalid[0]})")
    if reasons["bad_event_type"]:
        line += (f"; liverec's event types are {', '.join(EVENT_TYPES)}: map yours with "
                 "--event-types, e.g. like=click")
    return line


def _tie_order(value: str | None) -> Any:
    if value not in (None, "file", "hash"):
        raise typer.BadParameter("must be 'file' or 'hash'", param_hint="--tie-order")
    return value


def _tie_scoring(value: str) -> str:
    if value not in ("sequential", "together"):
        raise typer.BadParameter("must be 'sequential' or 'together'",
                                 param_hint="--tie-scoring")
    return value


def evaluate(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Interactions CSV (plain or .gz).",
                                         exists=True)],
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="liverec | movielens | online-retail (default: from header)"),
    ] = None,
    user_col: Annotated[str | None, typer.Option("--user-col",
                                                 help="User column of your own CSV.")] = None,
    item_col: Annotated[str | None, typer.Option("--item-col",
                                                 help="Item column of your own CSV.")] = None,
    time_col: Annotated[str | None, typer.Option(
        "--time-col", help="Time column of your own CSV: Unix seconds or ISO 8601.")] = None,
    event_type_col: Annotated[str | None, typer.Option(
        "--event-type-col",
        help="Event-type column of your own CSV: view | click | add_to_cart | purchase "
             "(other values: see --event-types; without the column every row is a view)."),
    ] = None,
    event_types: Annotated[str | None, typer.Option(
        "--event-types",
        help="Your event types as liverec's, e.g. 'like=click,buy=purchase' (a row whose "
             "type is still none of liverec's is invalid and left out)."),
    ] = None,
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated registry names, or 'all'.")
    ] = "all",
    model_params: Annotated[
        str | None,
        typer.Option("--model-params",
                     help='JSON {"model": {"param": value}}: constructor arguments, as '
                          "`liverec train --model-params` takes them (e.g. a hybrid's "
                          "components)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Cut-off of the metrics.")] = 10,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1,
        help="Events per mini-batch. Every event of a batch is scored before the models "
             "learn any of it, so the figures depend on it (larger batches: staler "
             "models, lower figures); 256 is the trainer's default."),
    ] = 256,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N events (time order).")
    ] = None,
    window: Annotated[
        int, typer.Option("--window", min=1, help="Evaluated events in the rolling HR window.")
    ] = 1000,
    sample: Annotated[
        float,
        typer.Option(
            "--sample", callback=lambda v: _share(v, "--sample"),
            help="Score a seeded uniform sample of this share (0 < x <= 1) of the "
                 "evaluable events (1: all).",
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of --sample's draws and of the intervals' bootstrap (a "
                       "model's own seed is a "
                       "--model-params argument)."),
    ] = 0,
    cold_threshold: Annotated[
        int,
        typer.Option("--cold-threshold", min=1,
                     help="Cold item/user: 1 to N-1 earlier events (with none, an event "
                          "is not evaluable)."),
    ] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG: rolling HR@K and HR@K on cold items/users."),
    ] = None,
    item_features: Annotated[
        Path | None,
        typer.Option(
            "--item-features", exists=True,
            help="Item content for the models that use it: MovieLens movies.csv (or its "
                 "ratings.csv / folder), the Online Retail CSV (Description), or any CSV "
                 "with item_id and text columns; the format comes from --features-preset, "
                 "else --preset, else the header.",
        ),
    ] = None,
    split: Annotated[
        float,
        typer.Option("--split", min=0.0, max=1.0,
                     help="Also report HR@K (all, cold items, cold users) on the first "
                          "share of the events (where hyperparameters are chosen; cut at "
                          "the batch boundary reached there, reported as split_events) and "
                          "on the rest; 0 turns it off."),
    ] = 0.3,
    features_preset: Annotated[
        str | None,
        typer.Option("--features-preset",
                     help="movielens | online-retail | text (default: --preset when it is "
                          "one of them, else from the header)"),
    ] = None,
    tie_order: Annotated[
        str | None,
        typer.Option("--tie-order",
                     help="Order of events with equal timestamps: 'file' or 'hash' (of user "
                          "and item). Default: hash for MovieLens, whose file lists a "
                          "second's ratings by movie id (a sequence model would learn that "
                          "sort), else file. 'file' reproduces MovieLens figures measured "
                          "before 2026-12-07."),
    ] = None,
    tie_scoring: Annotated[
        str,
        typer.Option("--tie-scoring", callback=_tie_scoring,
                     help="How a user's events with equal timestamps are scored. "
                          "'sequential': one after another, each with the group's earlier "
                          "events in the user's history (so --tie-order matters). "
                          "'together': each against the history before the group, as a "
                          "live system sees a basket or a page of ratings that arrives at "
                          "once (batches then never split a timestamp)."),
    ] = "sequential",
) -> None:
    """Prequential (test-then-train) evaluation of several models side by side, one pass.

    Every evaluable event is scored by every model (--sample scores a seeded
    share of them), in batched form: one score_many call per model and batch. A
    hybrid blends the other listed models instead of learning private copies.
    """
    import time

    import orjson
    from tqdm import tqdm

    from liverec.provenance import code_provenance, model_hyperparameters
    from online_models import registry
    from online_models.datasets import read_interactions, to_batches
    from online_models.evaluation import COLD_SEGMENTS, EvalSample, PrequentialEvaluator
    from online_models.uncertainty import MIN_USERS, UserHits
    from stream.buildinfo import liverec_version

    try:
        names = registry.parse_models(models)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--models") from exc
    t0 = time.perf_counter()
    try:
        ds = read_interactions(
            path,
            preset,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            event_type_col=event_type_col,
            tie_order=_tie_order(tie_order),
            event_types=event_types_option(event_types),
        )
    except (ValueError, OSError) as exc:  # an unknown preset, a missing column or file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if ds.invalid:
        typer.echo(invalid_rows_line(ds), err=True)
    if limit is not None:
        ds = ds[:limit]
    typer.echo(
        f"{path}: {len(ds)} events, {ds.n_users} users, {ds.n_items} items "
        f"(read in {time.perf_counter() - t0:.1f}s)",
        err=True,
    )

    params = _model_params(model_params, names)
    # Bound: a hybrid blends the other listed models; built is in learning order.
    try:
        built = registry.create_models(names, params)
    except (TypeError, ValueError) as exc:
        # a constructor's own refusal: of the arguments given, or of none given
        hint = "--model-params" if params else "--models (no --model-params given)"
        raise typer.BadParameter(f"{hint}: {exc}") from exc
    if item_features is None and (rankers := registry.content_rankers(built)):
        typer.echo(f"warning: {', '.join(rankers)} ranks by item content, and none is "
                   "given (--item-features): its figures are popularity's", err=True)
    if item_features is not None:
        from online_models.content import load_item_features
        from online_models.item_texts import ITEM_TEXT_PRESETS

        fpreset = features_preset or (preset if preset in ITEM_TEXT_PRESETS else None)
        t0 = time.perf_counter()
        try:
            features = load_item_features(item_features, fpreset)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: --item-features: {exc}", err=True)
            raise typer.Exit(2) from None
        took = registry.give_item_features(built, features)
        typer.echo(
            f"{item_features}: content of {len(features)} items (read in "
            f"{time.perf_counter() - t0:.1f}s), given to {', '.join(took) or 'no model'}",
            err=True,
        )
    together = tie_scoring == "together"
    evaluator = PrequentialEvaluator(
        built, k=k, rolling_window=window, sample=EvalSample(fraction=sample, seed=seed),
        cold_threshold=cold_threshold, ties_together=together,
    )
    from online_models.click_auc import AUC_EVERY, BatchAUC, ClickModel

    # The click models' (the re-ranker's) sampled AUC; none under together, as its
    # sampler takes a basket's lines one by one (every=0: no model is sampled).
    aucs = BatchAUC(built, every=0 if together else AUC_EVERY)
    learn_s = dict.fromkeys(names, 0.0)
    curve_x: list[int] = []
    curve: dict[str, list[float]] = {name: [] for name in names}
    seen = 0
    split_at = int(split * len(ds)) if 0.0 < split < 1.0 else 0
    first: dict[str, dict[str, float]] = {}
    by_user = UserHits(names, seed=seed)  # HR@K's interval: a bootstrap over users
    t_run = time.perf_counter()
    with tqdm(total=len(ds), unit="ev", desc="evaluate", smoothing=0.05) as bar:
        for batch in to_batches(ds, batch_size, whole_ties=together):
            aucs.sample(batch, evaluator, seed=seen)  # before anything learns the batch
            out = evaluator.process(batch, learn=False)
            for name, model in built.items():
                t = time.perf_counter()
                model.learn(batch)
                learn_s[name] += time.perf_counter() - t
            seen += len(batch)
            if split_at and not first and seen >= split_at:
                # Totals are cumulative: "rest" is what the end adds to these. The cut is
                # this batch's end, so the report gives that count, not the requested one.
                first = {name: evaluator.totals(name) for name in names}
                split_at = seen
            if out.n_evaluated:
                by_user.add(batch.users[out.positions],
                            {name: out.models[name].hits for name in names})
                curve_x.append(seen)
                for name in names:
                    curve[name].append(evaluator.rolling(name)["hr"])
            bar.update(len(batch))
    elapsed = time.perf_counter() - t_run

    report_models: dict[str, dict[str, Any]] = {}
    blends: dict[str, dict[str, float]] = {}
    for name in names:
        tot = evaluator.totals(name)
        entry: dict[str, Any] = {
            f"{metric}@{k}": tot[metric]
            for metric in ("hr", "ndcg", "mrr", "precision", "coverage", "novelty", "diversity")
        }
        entry["evaluated"] = int(tot["n"])
        lo, hi = by_user.interval(name)
        entry[f"hr@{k}_ci95"] = [lo, hi]
        entry["ci95"] = f"{lo:.3f}-{hi:.3f}" if lo == lo else "-"  # NaN: too few users
        entry["eligible"] = int(tot["n_eligible"])
        for seg in COLD_SEGMENTS:
            entry[f"hr@{k}_{seg}"] = tot[f"hr_{seg}"]
            entry[f"evaluated_{seg}"] = int(tot[f"n_{seg}"])
        if first:
            entry.update(_split_entry(first[name], tot, k))
        if name in aucs.totals:
            auc = aucs.totals[name]
            entry["auc"] = auc.auc
            entry["auc_positives"] = auc.positives
            entry["auc_negatives"] = auc.negatives
        entry["learn_events_per_s"] = len(ds) / learn_s[name] if learn_s[name] > 0 else 0.0
        # A blend's own time: the components it shares learn and score in their rows.
        shared = sorted(getattr(built[name], "shared_components", dict)())
        if shared:
            entry["timings_exclude"] = shared
        entry["score_ms_per_event"] = (
            1e3 * evaluator.score_seconds[name] / max(1, int(tot["n"]))
        )
        blend = built[name].blend_weights()
        if blend:
            blends[name] = {c: float(v) for c, v in blend.items()}
            entry["blend_weights"] = blends[name]
        report_models[name] = entry
    diffs = _differences(by_user, report_models, k)
    report = {
        "dataset": str(path),
        "preset": preset,
        "events": len(ds),
        "users": ds.n_users,
        "items": ds.n_items,
        "batch_size": batch_size,
        "k": k,
        "rolling_window": window,
        "limit": limit,
        "tie_order": ds.tie_order,
        "tie_scoring": tie_scoring,
        "sample": sample,
        "seed": seed,  # --seed: --sample's draws and the intervals' bootstrap, not the models
        "cold_threshold": cold_threshold,
        "split": split,
        "split_events": split_at,
        # rows of the file that are no events (by reason), and the events that were
        # not evaluable (by reason): what every model's figures leave out
        "skipped_rows": dict(ds.skipped),  # of the whole file, --limit or not
        "invalid_rows": len(ds.invalid),
        "not_evaluable": dict(evaluator.excluded),
        # whose events were evaluated: the units HR@K's 95% intervals resample
        "users_evaluated": by_user.n_users,
        "hr_differences": diffs,
        "liverec_version": liverec_version(),
        # what produced the figures: the code and every model's settings as it ran
        # (defaults included; model_params holds only the ones given)
        "code": code_provenance(),
        "hyperparameters": model_hyperparameters(built),
        "item_features": str(item_features) if item_features is not None else None,
        "model_params": params,
        "elapsed_s": round(elapsed, 1),
        "models": report_models,
        "rolling_hr": {"events": curve_x, **curve},
    }

    excluded = ", ".join(f"{n:,} {why}" for why, n in evaluator.excluded.items())
    skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(ds.skipped.items()))
    typer.echo(f"{evaluator.n_eligible:,} of {len(ds):,} events evaluable (not: {excluded})"
               + (f"; file rows skipped: {skipped}"
                  + (" (in the whole file, not only the events read)" if limit else "")
                  if skipped else "")
               + f"; ties in {ds.tie_order} order, scored {tie_scoring}")
    typer.echo(_summary_table(report_models, k))
    if by_user.n_users < MIN_USERS:
        typer.echo(f"95% CI: none, the events of {by_user.n_users} users were evaluated "
                   f"(a bootstrap over users needs {MIN_USERS})")
    elif diffs:
        typer.echo(f"95% CI: a bootstrap over the {by_user.n_users:,} users whose events "
                   f"were evaluated (their events are not independent); {diffs[0]['best']}'s "
                   f"hr@{k} minus each other's, paired: " + ", ".join(
                       f"{d['other']} {d['difference']:+.4f} ({d['ci95'][0]:+.4f} to "
                       f"{d['ci95'][1]:+.4f})" for d in diffs))
    if together and any(isinstance(m, ClickModel) for m in built.values()):
        typer.echo("click AUC: not measured under --tie-scoring together (its sampler "
                   "scores a basket's lines one after another)")
    for name, blend in blends.items():
        typer.echo(f"{name}'s blend at the end: "
                   + ", ".join(f"{c} {v:.2f}" for c, v in blend.items()))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        typer.echo(f"report: {json_out}")
    if plot is not None:
        _plot_rolling(curve_x, curve, k, window, f"{path.name} ({len(ds)} events)", plot,
                      report_models, cold_threshold)
        typer.echo(f"plot: {plot}")


def _split_entry(first: dict[str, float], total: dict[str, float], k: int
                 ) -> dict[str, float]:
    """HR@K overall / on cold items / on cold users, in the first part and in the rest.

    >>> e = _split_entry({"n": 10, "hr": 0.5, "n_cold_item": 0, "hr_cold_item": float("nan"),
    ...                   "n_cold_user": 2, "hr_cold_user": 1.0},
    ...                  {"n": 30, "hr": 0.2, "n_cold_item": 4, "hr_cold_item": 0.25,
    ...                   "n_cold_user": 2, "hr_cold_user": 1.0}, 10)
    >>> e["hr@10_first"], e["hr@10_rest"], e["hr@10_cold_item_rest"], e["evaluated_cold_user_rest"]
    (0.5, 0.05, 0.25, 0)
    >>> _split_entry({"n": 3, "hr": 1 / 3}, {"n": 7, "hr": 1 / 7}, 10)["hr@10_rest"]
    0.0
    """
    out: dict[str, float] = {}
    for seg, n_key, hr_key in (("", "n", "hr"), ("_cold_item", "n_cold_item", "hr_cold_item"),
                               ("_cold_user", "n_cold_user", "hr_cold_user")):
        n1, n = int(first.get(n_key, 0)), int(total.get(n_key, 0))
        # HR is hits / n with whole hits: round away the float error.
        hits1 = round(first[hr_key] * n1) if n1 else 0
        hits = round(total[hr_key] * n) if n else 0
        out[f"hr@{k}{seg}_first"] = hits1 / n1 if n1 else float("nan")
        out[f"hr@{k}{seg}_rest"] = (hits - hits1) / (n - n1) if n > n1 else float("nan")
        out[f"evaluated{seg}_first"] = n1
        out[f"evaluated{seg}_rest"] = n - n1
    return out


def _differences(by_user: UserHits, models: dict[str, dict[str, Any]], k: int
                 ) -> list[dict[str, Any]]:
    """The best model's HR@K against each other model's: the difference and its
    paired 95% interval (the same users resampled for both)."""
    ranked = sorted((m for m in models if models[m][f"hr@{k}"] == models[m][f"hr@{k}"]),
                    key=lambda m: -models[m][f"hr@{k}"])
    out = []
    for other in ranked[1:]:
        diff, lo, hi = by_user.difference(ranked[0], other)
        out.append({"best": ranked[0], "other": other, "difference": diff,
                    "ci95": [lo, hi]})
    return out


def _summary_table(models: dict[str, dict[str, Any]], k: int) -> str:
    """The figures of every model in tables that each fit 80 columns: accuracy and
    speed; the recommended lists and cold starts; with ``--split``, HR@K on the first
    share and the rest (one 210-column row per model wrapped in a terminal)."""
    w = max(12, *(len(name) + 2 for name in models))

    def table(title: str, cols: list[tuple[str, str, int, str]]) -> list[str]:
        head = f"{title:<{w}}" + "".join(f"{h:>{cw}}" for _, h, cw, _ in cols)
        rows = [head, "-" * len(head)]
        for name, m in models.items():
            label = f"{name}*" if m.get("timings_exclude") else name
            rows.append(f"{label:<{w}}" + "".join(
                f"{m.get(key, float('nan')):>{cw}{fmt}}" for key, _, cw, fmt in cols))
        return rows

    lines = table("model", [(f"hr@{k}", f"hr@{k}", 9, ".4f"), ("ci95", "95% CI", 13, ""),
                            (f"ndcg@{k}", f"ndcg@{k}", 9, ".4f"),
                            (f"mrr@{k}", f"mrr@{k}", 9, ".4f"),
                            (f"precision@{k}", f"prec@{k}", 9, ".4f"),
                            ("learn_events_per_s", "learn ev/s", 12, ",.0f"),
                            ("score_ms_per_event", "score ms", 10, ".2f")])
    lines += ["", *table("lists, cold", [
        (f"coverage@{k}", "coverage", 10, ".4f"), (f"novelty@{k}", "novelty", 9, ".3f"),
        (f"diversity@{k}", "diversity", 10, ".4f"),
        (f"hr@{k}_cold_item", "cold item", 10, ".4f"),
        (f"hr@{k}_cold_user", "cold user", 10, ".4f"), ("evaluated", "evaluated", 10, ",.0f")])]
    if any(f"hr@{k}_first" in m for m in models.values()):
        lines += ["", *table("split", [
            (f"hr@{k}_first", "hr first", 10, ".4f"), (f"hr@{k}_rest", "hr rest", 10, ".4f"),
            (f"hr@{k}_cold_item_first", "cold i 1st", 11, ".4f"),
            (f"hr@{k}_cold_item_rest", "cold i rest", 12, ".4f")])]
    lines += [f"* learn ev/s and score ms: {name}'s own time; the models it shares "
              f"({', '.join(m['timings_exclude'])}) learn and score in their own rows"
              for name, m in models.items() if m.get("timings_exclude")]
    from online_models.click_auc import AUC_EVERY, AUC_POSITIVES

    lines += [f"{name}: click AUC {m['auc']:.4f} over {int(m['auc_positives']):,} evaluable "
              f"clicks against {int(m['auc_negatives']):,} sampled negatives (every "
              f"{AUC_EVERY}th batch, its first {AUC_POSITIVES})" if m["auc_positives"] else
              f"{name}: click AUC - (no evaluable click in the sampled batches: every "
              f"{AUC_EVERY}th, its first {AUC_POSITIVES})"
              for name, m in models.items() if "auc" in m]
    return "\n".join(lines)


def _plot_rolling(
    x: list[int],
    curves: dict[str, list[float]],
    k: int,
    window: int,
    title: str,
    out: Path,
    models: dict[str, dict[str, float]],
    cold_threshold: int,
) -> None:
    """Rolling HR@K per model (left) and HR@K overall / cold item / cold user (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(13, 4.5), dpi=100, gridspec_kw={"width_ratios": [2.2, 1]}
    )
    for name, ys in curves.items():
        ax.plot(x, ys, label=name, linewidth=1.2)
    ax.set_xlabel("events")
    ax.set_ylabel(f"rolling HR@{k} (last {window} evaluated events)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, ncol=2)

    names = list(models)
    segments = [("", "all"), ("_cold_item", f"item < {cold_threshold} events"),
                ("_cold_user", f"user < {cold_threshold} events")]
    width = 0.8 / len(segments)
    pos = np.arange(len(names))
    for j, (suffix, label) in enumerate(segments):
        vals = np.array([float(models[n].get(f"hr@{k}{suffix}", float("nan")))
                         for n in names])
        at = pos + (j - 1) * width
        drawn = bars.bar(at, np.nan_to_num(vals), width, label=label)
        for x in at[np.isnan(vals)]:  # no event evaluated in this segment: n/a, not 0
            bars.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90,
                      color=drawn.patches[0].get_facecolor())
    bars.set_xticks(pos, names, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel(f"HR@{k}")
    bars.set_title("cold start")
    bars.grid(alpha=0.3, axis="y")
    bars.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("generate")(generate)
    app.command("evaluate")(evaluate)
