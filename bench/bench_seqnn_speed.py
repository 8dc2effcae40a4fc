"""Learning rate of ``seqnn`` configurations on a real stream, per core (process CPU time).

Learn-only (no evaluation): the first ``--warmup`` batches untimed, the next
``--batches`` timed with ``time.process_time`` (per core, and less sensitive to
neighbours on a shared machine than wall-clock time). Each configuration is
``name:json-params``. The configurations (and the ``--reference`` models, e.g.
``itemknn``, and ``--baseline-rev``, the ``SeqNN`` of another git revision) learn the
timed batches in turns of ``--chunk`` batches, so a busy machine slows them alike:
compare the ratios (``x first``: speed over the first configuration's), not the
absolute rates, between runs.

Wall-clock rates are printed too (a configuration on ``"device": "cuda"`` is
synchronised at the end of each turn, so its queued GPU work counts): on a GPU the
wall rate is the speed, and CPU ms per 1,000 events is what the model takes from the
trainer's machine. ``--synthetic N`` learns the issue-9 synthetic stream (``liverec
generate``'s, ``--users``/``--items``) instead of a file.

Example::

    .venv/bin/python bench/bench_seqnn_speed.py ../shared/data/movielens-small/ratings.csv \\
        --preset movielens --limit 30000 --reference itemknn --baseline-rev 9724717 \\
        --config 'default:{"device": "cpu"}' \\
        --config 'steps4:{"steps_per_batch": 4, "device": "cpu"}'
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from online_models import registry  # noqa: E402
from online_models.content import load_item_features  # noqa: E402
from online_models.datasets import Dataset, read_interactions, to_batches  # noqa: E402
from online_models.seqnn import SeqNN  # noqa: E402
from online_models.synthetic import generate_events  # noqa: E402


def _seqnn_at(rev: str) -> Any:
    """The ``SeqNN`` class of git revision ``rev``: every ``online_models/seqnn*.py`` of
    that revision (the model is split over several modules since 0f2baa0), loaded as a
    package of their own; the rest of ``online_models`` is this checkout's."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev,
                             "online_models/"], check=True, capture_output=True,
                            text=True).stdout.split()
    pkg = "seqnn_at_" + re.sub(r"\W", "_", rev)  # HEAD~1, v1.0, main@{1}: identifiers
    root = Path(tempfile.mkdtemp())
    (root / pkg).mkdir()
    (root / pkg / "__init__.py").write_text("")
    for name in listed:
        if Path(name).name.startswith("seqnn") and name.endswith(".py"):
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"],
                                 check=True, capture_output=True, text=True).stdout
            (root / pkg / Path(name).name).write_text(
                src.replace("online_models.seqnn", f"{pkg}.seqnn"))
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{pkg}.seqnn").SeqNN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path, nargs="?", help="data file (or --synthetic)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--synthetic", type=int, default=0,
                    help="learn this many synthetic events instead of a file")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--limit", type=int, default=30_000)
    ap.add_argument("--warmup", type=int, default=40, help="untimed batches")
    ap.add_argument("--batches", type=int, default=40, help="timed batches")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=5, help="timed batches per turn")
    ap.add_argument("--config", action="append", default=[], help="name:json-params")
    ap.add_argument("--reference", action="append", default=[],
                    help="registry model timed alongside (e.g. itemknn)")
    ap.add_argument("--baseline-rev", default=None,
                    help="also time the SeqNN of this git revision (default params)")
    ap.add_argument("--no-features", action="store_true")
    args = ap.parse_args()
    if args.synthetic:
        ds = Dataset.from_records(generate_events(args.synthetic, args.users, args.items))
    elif args.path is None or args.preset is None:
        ap.error("a data file and --preset, or --synthetic N")
    else:
        ds = read_interactions(args.path, args.preset)[: args.limit]
    batches = list(to_batches(ds, args.batch_size))[: args.warmup + args.batches]
    features = None if args.no_features or args.synthetic else \
        load_item_features(args.path, args.preset)
    models: dict[str, Any] = {}
    for spec in args.config or ["default:{}"]:
        name, _, params = spec.partition(":")
        models[name] = SeqNN(**json.loads(params or "{}"))
    if args.baseline_rev:
        models[f"seqnn@{args.baseline_rev}"] = _seqnn_at(args.baseline_rev)()
    for ref in args.reference:
        models[ref] = registry.create(ref)
    for model in models.values():
        if features is not None and hasattr(model, "set_item_features"):
            model.set_item_features(features)
        for b in batches[: args.warmup]:
            model.learn(b)
    cpu = dict.fromkeys(models, 0.0)
    wall = dict.fromkeys(models, 0.0)
    steps = {n: getattr(m, "steps_total", 0) for n, m in models.items()}
    timed = batches[args.warmup :]
    for start in range(0, len(timed), args.chunk):
        for name, model in models.items():
            _sync(model)
            t, w = time.process_time(), time.perf_counter()
            for b in timed[start : start + args.chunk]:
                model.learn(b)
            _sync(model)
            cpu[name] += time.process_time() - t
            wall[name] += time.perf_counter() - w
    n = sum(len(b) for b in timed)
    first = next(iter(models))
    print(f"{len(timed)} timed batches ({n} events), load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    for name, model in models.items():
        rate = n / cpu[name]
        st = getattr(model, "steps_total", 0) - steps[name]
        per_step = f"{st} steps, {1e3 * wall[name] / st:.1f} ms/step wall, " if st else ""
        print(f"{name:<16} {rate:9,.0f} events/s CPU  x{cpu[first] / cpu[name]:6.2f} first  "
              f"{n / wall[name]:9,.0f} events/s wall  x{wall[first] / wall[name]:6.2f} first  "
              f"{1e6 * cpu[name] / n:7.1f} CPU ms/1k events  ({per_step}{model.n_items} items)",
              flush=True)


def _sync(model: Any) -> None:
    """Wait for a GPU model's queued work (a no-op on the CPU)."""
    if getattr(model, "torch_device", "cpu").startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
