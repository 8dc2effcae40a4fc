"""Resident memory of the embedding model grown to 1M items, against its parameter bytes.

Run: ``.venv/bin/python bench/bench_memory.py --items 1000000 --dim 64``

The model learns one event per new item (users cycle through ``--users`` ids) in
mini-batches of ``--batch`` events, so the item table grows by capacity doubling to
``--items`` rows the way it would in production. RSS (psutil) is read after the model
is built and again after growth; the delta is compared with the parameter bytes of the
live rows (``(users + items) × dim × 4``). The report also splits out what is not
parameters: spare capacity from doubling, row-wise Adagrad state and row bookkeeping,
and the string id indexes (id strings, the row list and the hash table).

What is measured is the model: a throwaway model learns one small batch first, so the
pages of torch/numpy code and kernels that the first ``learn`` faults in (~45 MiB, the
runtime's, not the model's) are resident before the baseline. Each batch's id lists are
built inside the loop and freed after it (at most ``2 × --batch`` strings live at once);
the item strings the index keeps are the model's and are counted.

By default the process pins glibc's mmap threshold the way every ``liverec`` command
does (``liverec.runtime``); ``--malloc default`` keeps glibc's dynamic threshold, to
show what the allocator alone adds.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
import psutil

from liverec.runtime import configure_malloc
from online_models.base import Batch
from online_models.embedding import EmbeddingModel


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument(
        "--malloc",
        choices=("pinned", "default"),
        default="pinned",
        help="glibc mmap threshold: pinned (and the top padded) as by the liverec "
             "command, or glibc's dynamic one",
    )
    args = ap.parse_args(argv)
    pinned = args.malloc == "pinned"
    if pinned:
        configure_malloc("train")  # threshold pinned, top padded

    warm = EmbeddingModel(dim=args.dim, n_negatives=16, initial_capacity=1024, seed=1)
    n_warm = 2_000
    warm.learn(
        Batch.from_columns(
            [f"w-user-{k}" for k in range(n_warm)],
            [f"w-item-{k}" for k in range(n_warm)],
            timestamps=np.arange(n_warm, dtype=np.float64),
        )
    )
    warm.score_all("w-user-0")
    del warm

    model = EmbeddingModel(dim=args.dim, n_negatives=16, initial_capacity=1024, seed=0)
    before = rss()
    t0 = time.perf_counter()
    for start in range(0, args.items, args.batch):
        stop = min(start + args.batch, args.items)
        items = [f"item-{k}" for k in range(start, stop)]
        users = [f"user-{k % args.users}" for k in range(start, stop)]
        model.learn(Batch.from_columns(users, items, timestamps=np.arange(start, stop, 1.0)))
        del items, users
    elapsed = time.perf_counter() - t0
    after = rss()

    mib = 1024**2
    dim = args.dim
    params = (model.n_users + model.n_items) * dim * 4
    tables = sum(t.weight.numel() * 4 for t in (model._ut, model._it))
    book = sum(
        t.acc.numel() * 4 + t.alive.nbytes + t.last_seen.nbytes + t.count.nbytes
        for t in (model._ut, model._it)
    )
    id_strings = sum(
        sys.getsizeof(k) for index in (model.users, model.items) for k in index.ids if k
    )
    id_tables = sum(
        sys.getsizeof(index.ids) + index._slots.itemsize * len(index._slots)
        for index in (model.users, model.items)
    )
    ids = id_strings + id_tables
    delta = after - before
    print(
        f"items={model.n_items:,} users={model.n_users:,} dim={dim} ({elapsed:.1f}s to grow, "
        f"malloc mmap threshold {'pinned, top padded' if pinned else 'glibc default'})"
    )
    print(f"parameter bytes (live rows)     {params / mib:9.1f} MiB")
    print(f"allocated tables (capacity)     {tables / mib:9.1f} MiB")
    print(f"optimiser state + bookkeeping   {book / mib:9.1f} MiB")
    print(f"id strings (IdIndex)            {id_strings / mib:9.1f} MiB")
    print(f"id row list + hash table        {id_tables / mib:9.1f} MiB")
    print(f"rest (allocator, temporaries)   {(delta - tables - book - ids) / mib:9.1f} MiB")
    print(f"RSS delta                       {delta / mib:9.1f} MiB")
    print(f"RSS delta / parameter bytes     {delta / params:9.2f}x")
    print(
        f"model-owned (tables + optimiser + bookkeeping) / parameter bytes "
        f"{(tables + book) / params:.2f}x"
    )
    print(f"model-owned + id indexes / parameter bytes {(tables + book + ids) / params:.2f}x")


if __name__ == "__main__":
    main()
