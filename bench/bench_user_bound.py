"""What bounding the trainer's users costs and saves: ``history_max_users`` side by side.

Run::

    .venv/bin/python bench/bench_user_bound.py --events 200000 --users 100000 --bounds none 10000

A seeded synthetic stream with many users goes through ``trainer.Trainer.handle`` (the
learner's whole per-batch path: de-duplication, flood guard, sampled evaluation,
learning, forgetting) in decoded batches of ``--batch-size``, with a snapshot every
``--snapshot-every-s`` seconds as the service takes them, once per bound, each in its
own process (``none`` = no bound). No Kafka: the source thread's work is not here.
Printed per bound: learner events/s (wall) and thread CPU per event, the users the
trainer's history holds at the end and the users forgotten, the users the models hold
(summed), the process's resident memory growth over the run, the last snapshot's size
on disk and the learner's pause to copy the state for it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args: argparse.Namespace, bound: int | None) -> dict[str, float]:
    import orjson
    from tqdm import tqdm

    from liverec.runtime import configure_malloc
    from online_models.synthetic import generate_events
    from stream.columns import decode_columns
    from stream.events import EVENT_WEIGHTS, Limits
    from stream.settings import KafkaSettings
    from trainer import Trainer, TrainerSettings
    from trainer.source import PolledBatch

    configure_malloc("train")
    values = [orjson.dumps(r) for r in generate_events(args.events, args.users, args.items,
                                                       seed=args.seed)]
    size = args.batch_size
    batches = []
    for lo in range(0, len(values), size):
        cols, _ = decode_columns(values[lo:lo + size], limits=Limits(), weights=EVENT_WEIGHTS)
        batches.append(PolledBatch(cols, [], {("t", 0): lo + size}, {("t", 0): lo}, len(cols)))
    del values
    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainerSettings(group="bench", snapshots=Path(tmp) / "s", models=args.mix,
                                   batch_size=size, metrics_port=-1,
                                   history_max_users=bound)
        trainer = Trainer(settings, KafkaSettings(bootstrap="unused:1", topic="t"))
        rss0 = _rss_bytes()
        w0, c0 = time.perf_counter(), time.thread_time()
        last = w0
        for b in tqdm(batches, desc=f"history_max_users={bound}", unit="batch",
                      file=sys.stderr):
            trainer.handle(b)
            now = time.perf_counter()
            if now - last >= args.snapshot_every_s:
                trainer.checkpoint("periodic")
                last = now
            trainer._finish_checkpoint()
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        written = trainer.checkpoint("final", wait=True)
        assert written is not None
        snap_bytes = written.info.bytes
        out = {
            "events_per_s": args.events / wall,
            "cpu_us_per_event": 1e6 * cpu / args.events,
            "users_tracked": len(trainer.history),
            "users_forgotten": trainer.metrics.registry.get_sample_value(
                "liverec_trainer_users_forgotten_total") or 0.0,
            "model_users": sum(m.n_users for m in trainer.models.values()),
            "rss_growth_bytes": _rss_bytes() - rss0,
            "snapshot_bytes": snap_bytes,
            "capture_ms": 1000 * trainer._capture_s,
        }
        trainer.checkpointer.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--mix", default="popularity,itemknn,sequence,sknn,userknn,bpr",
                    help="models (the torch ones are slow here: leave them out for a quick run)")
    ap.add_argument("--bounds", nargs="+", default=["none", "10000"],
                    help="history_max_users values to compare ('none': no bound)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--snapshot-every-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        bound = None if args.child == "none" else int(args.child)
        print(json.dumps(_child(args, bound)))
        return
    print(f"{args.events:,} events, {args.users:,} users, {args.items:,} items, models "
          f"{args.mix}, batch {args.batch_size}")
    print("| history_max_users | learner events/s | CPU us/event | users held / forgotten "
          "| users in the models | RSS growth MB | last snapshot MB | state copy ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = list(argv if argv is not None else sys.argv[1:])
    for bound in args.bounds:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *base,
                               "--child", bound], check=True, stdout=subprocess.PIPE,
                              text=True, cwd=REPO)  # the child's progress bar on stderr
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {bound} | {r['events_per_s']:,.0f} | {r['cpu_us_per_event']:.1f} | "
              f"{r['users_tracked']:,} / {r['users_forgotten']:,.0f} | {r['model_users']:,} | "
              f"{r['rss_growth_bytes'] / 2**20:,.0f} | {r['snapshot_bytes'] / 2**20:,.1f} | "
              f"{r['capture_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
