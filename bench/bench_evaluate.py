"""`liverec evaluate` before and after, in one run: time and identical figures.

Run::

    .venv/bin/python bench/bench_evaluate.py ../shared/data/movielens-small/ratings.csv \
        --preset movielens --models popularity,itemknn,sequence,sknn,hybrid --limit 30000 \
        --json bench/results/evaluate-movielens-30k.json

The baseline is the code of ``--baseline-ref`` (a git revision, default the commit
before the batched evaluator), extracted with ``git archive`` into a temporary
directory; the candidate is this checkout. Each runs the same ``liverec evaluate``
command in a fresh process, one after the other (``--repeat`` alternates them), with
numeric thread pools pinned to one thread. Reported per run: wall seconds of the
evaluation loop (the report's ``elapsed_s``), whole-process wall seconds, and process
CPU seconds (user + system of the child, ``getrusage``) -- the CPU figure is the one
to compare on a shared, loaded machine. The script then compares every model's
metrics: HR@K must agree to 4 decimals (it prints any metric that differs at all).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
#: the last commit before batched scoring (per-event ``score_all`` in the evaluator)
DEFAULT_BASELINE = "adf71f2"
METRICS = ("hr", "ndcg", "mrr", "precision", "coverage", "novelty", "diversity")


def extract(ref: str, dest: Path) -> Path:
    """The tree of git revision ``ref`` under ``dest``."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True, capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_evaluate(tree: Path, args: list[str], out_json: Path) -> dict[str, Any]:
    """One ``liverec evaluate`` in a fresh process on ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    cmd = [sys.executable, "-c", "from liverec.cli import app; app()", "evaluate",
           *args, "--json", str(out_json)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluate failed on {tree}:\n{proc.stderr[-3000:]}")
    report = orjson.loads(out_json.read_bytes())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"loop_wall_s": report["elapsed_s"], "process_wall_s": round(wall, 1),
            "process_cpu_s": round(cpu, 1), "report": report}


def compare(base: dict[str, Any], new: dict[str, Any], k: int) -> dict[str, Any]:
    """Per model: HR@K of both, whether it agrees to 4 decimals, and metrics that differ."""
    out: dict[str, Any] = {}
    for name, b in base["models"].items():
        n = new["models"].get(name)
        if n is None:
            continue
        diffs = {
            m: [b[f"{m}@{k}"], n[f"{m}@{k}"]]
            for m in METRICS
            if b[f"{m}@{k}"] != n[f"{m}@{k}"]
        }
        if b["evaluated"] != n["evaluated"]:
            diffs["evaluated"] = [b["evaluated"], n["evaluated"]]
        hb, hn = b[f"hr@{k}"], n[f"hr@{k}"]
        out[name] = {
            "hr_baseline": hb,
            "hr_new": hn,
            "hr_same_4dp": f"{hb:.4f}" == f"{hn:.4f}",
            "evaluated": n["evaluated"],
            "differs": diffs,
            "learn_events_per_s": [round(b["learn_events_per_s"]), round(n["learn_events_per_s"])],
            "score_ms_per_event": [round(b["score_ms_per_event"], 3),
                                   round(n["score_ms_per_event"], 3)],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--preset", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    p.add_argument("--repeat", type=int, default=1, help="Alternate baseline/new this often.")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    ev_args = [str(Path(a.path).resolve()), "--preset", a.preset, "--models", a.models,
               "--k", str(a.k), "--batch-size", str(a.batch_size)]
    if a.limit:
        ev_args += ["--limit", str(a.limit)]
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = extract(a.baseline_ref, Path(tmp) / "baseline")
        for r in range(a.repeat):
            for label, tree in (("baseline", base_tree), ("new", ROOT)):
                res = run_evaluate(tree, ev_args, Path(tmp) / f"{label}-{r}.json")
                runs[label].append(res)
                print(f"{label:8s} loop {res['loop_wall_s']:7.1f} s wall, process "
                      f"{res['process_wall_s']:7.1f} s wall / {res['process_cpu_s']:7.1f} s CPU",
                      flush=True)
    best = {lab: min(rs, key=lambda x: x["process_cpu_s"]) for lab, rs in runs.items()}
    cmp = compare(best["baseline"]["report"], best["new"]["report"], a.k)
    ratio_cpu = best["baseline"]["process_cpu_s"] / best["new"]["process_cpu_s"]
    ratio_loop = best["baseline"]["loop_wall_s"] / best["new"]["loop_wall_s"]
    for name, c in cmp.items():
        flag = "same" if c["hr_same_4dp"] else "DIFFERENT"
        print(f"{name:12s} HR@{a.k} {c['hr_baseline']:.4f} -> {c['hr_new']:.4f} ({flag}); "
              f"other metrics differing: {sorted(c['differs']) or 'none'}; "
              f"learn ev/s {c['learn_events_per_s'][0]} -> {c['learn_events_per_s'][1]}; "
              f"score ms/event {c['score_ms_per_event'][0]} -> {c['score_ms_per_event'][1]}")
    print(f"speed-up: {ratio_cpu:.2f}x process CPU, {ratio_loop:.2f}x loop wall")
    if a.json is not None:
        result = {
            "command": " ".join(sys.argv),
            "baseline_ref": a.baseline_ref,
            "evaluate_args": ev_args,
            "runs": {lab: [{k: v for k, v in r.items() if k != "report"} for r in rs]
                     for lab, rs in runs.items()},
            "speedup_process_cpu": round(ratio_cpu, 2),
            "speedup_loop_wall": round(ratio_loop, 2),
            "models": cmp,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
