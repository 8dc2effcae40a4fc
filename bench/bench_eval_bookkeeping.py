"""What the trainer's sampled evaluation costs per event, against another revision.

Run::

    .venv/bin/python bench/bench_eval_bookkeeping.py --baseline-rev 6fae5da

The trainer hands every batch to :class:`online_models.evaluation.PrequentialEvaluator`
(history, catalogue, item and user counts, the diversity sketch) and scores only a
sample: at full speed the CPU governor holds scoring at its floor of 1,000 events a
minute, so the per-event bookkeeping is what evaluation costs. This runs a popularity
model (the cheapest learner, where that share is largest; ``--models all`` for the
trainer's default mix) on a seeded synthetic stream in batches of ``--batch-size``, as
the trainer does (evaluate, then learn; the sample budgeted at ``--eval-per-s``), and
reports thread CPU time per event of the evaluator and of learning. With
``--baseline-rev`` the same script runs, in turns, on a ``git archive`` of that
revision, each run in its own process: the ratio is measured under the same load.
Figures are the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> None:
    from online_models import registry
    from online_models.base import Batch, UserHistory, learning_order
    from online_models.evaluation import EvalSample, PrequentialEvaluator
    from online_models.synthetic import iter_events

    events = list(iter_events(args.events, args.users, args.items, seed=0))
    size = args.batch_size
    batches = [
        Batch.from_columns([e["user_id"] for e in events[lo:lo + size]],
                           [e["item_id"] for e in events[lo:lo + size]],
                           timestamps=[e["timestamp"] for e in events[lo:lo + size]])
        for lo in range(0, len(events), size)
    ]
    models = {n: registry.create(n) for n in registry.parse_models(args.models)}
    registry.bind(models)
    order = learning_order(models)
    evaluator = PrequentialEvaluator(
        models, history=UserHistory(max_items=200),
        sample=EvalSample(fraction=1.0, max_per_s=args.eval_per_s))
    eval_s = learn_s = 0.0
    for b in batches:
        t0 = time.thread_time()
        evaluator.process(b, learn=False)
        t1 = time.thread_time()
        for name in order:
            models[name].learn(b)
        learn_s += time.thread_time() - t1
        eval_s += t1 - t0
    print(json.dumps({"eval_us": 1e6 * eval_s / len(events),
                      "learn_us": 1e6 * learn_s / len(events),
                      "evaluated": evaluator.n_evaluated}))


def _archive(rev: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"liverec-{rev}-"))
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "online_models"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(out, filter="data")
    return out


def _run(root: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           "--events", str(args.events), "--users", str(args.users),
           "--items", str(args.items), "--batch-size", str(args.batch_size),
           "--eval-per-s", str(args.eval_per_s), "--models", args.models]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-per-s", type=float, default=1000 / 60,
                    help="scored events per second (the governor's floor by default)")
    ap.add_argument("--models", default="popularity",
                    help="the evaluated mix (registry names; 'all': the trainer's default)")
    ap.add_argument("--baseline-rev", default=None, help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    roots = {"this tree": ROOT}
    if args.baseline_rev:
        roots[args.baseline_rev] = _archive(args.baseline_rev)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    for r in range(args.repeats):
        for name, root in roots.items():
            runs[name].append(_run(root, args))
            print(f"run {r + 1}/{args.repeats} {name}: {runs[name][-1]}", flush=True)
    print(f"\nmodels: {args.models}")
    print("\n| code | evaluator µs/event (thread CPU) | learn µs/event | evaluation share |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rs in runs.items():
        ev = statistics.median(x["eval_us"] for x in rs)
        le = statistics.median(x["learn_us"] for x in rs)
        med[name] = ev
        print(f"| {name} | {ev:.2f} | {le:.2f} | {ev / (ev + le):.0%} |")
    if args.baseline_rev:
        print(f"\nevaluator cost, {args.baseline_rev} / this tree: "
              f"{med[args.baseline_rev] / med['this tree']:.2f}x")


if __name__ == "__main__":
    main()
