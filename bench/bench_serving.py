"""Serving benchmark: HTTP latency vs the bare floor, swaps under load, freshness, 1M items.

Run (all phases, ~25 minutes on 2 cores, most of it building the 1M HNSW index):

    .venv/bin/python bench/bench_serving.py --items 100000 --dim 64 --rate 300 \\
        --seconds 20 --swaps 50 --big-items 1000000 --freshness-clicks 40

Phases
------
1. A BPR snapshot of ``--items`` x ``--dim`` random factors drawn around
   ``--clusters`` centres (plus popularity and per-user history) is written with
   ``SnapshotStore``; ``liverec serve`` runs in its
   own process; the load generator (asyncio keep-alive connections, open loop:
   request ``i`` is due at ``t0 + i / rate`` and its latency counts from that due
   time) runs in another.
2. For each server configuration in ``--configs`` (``brute``: exact top-k, one
   product per request, ``LIVEREC_RANK_BATCH=false``; ``batched``: exact top-k with
   micro-batched scoring, ``LIVEREC_RANK_BATCH=true``, the default;
   ``batched-2slots``: up to two products at once, ``LIVEREC_RANK_BATCH_SLOTS=2``;
   ``batched-worker``: every query through the worker, none scored inline,
   ``LIVEREC_RANK_BATCH_INLINE=false``; ``ann``: HNSW for every factor
   model), ``/healthz`` at ``--rate`` req/s, then
   ``/v1/recommendations`` at the same rate, then ``/healthz`` again; the ratio is
   the recommendations p99 over the worse of the two ``/healthz`` p99s. Beside it
   the in-process figures: a bare ``np.dot(V, q)``, the exact top-k and the ANN
   top-k (``LoadedSnapshot.recommend``), with ANN recall@10 on these factors and on
   i.i.d. ones (the worst case for an index). In-process closed loops with
   ``--inprocess-threads`` threads compare exact top-k throughput one product per
   request against micro-batched (with the mean batch size).
3. ``/v1/recommendations`` at ``--rate`` while this process writes ``--swaps`` new
   snapshots; every failed request (non-200 or transport error) is counted, and the
   server's own reload counter confirms the swaps.
4. Freshness (needs Kafka; skipped with ``--no-kafka``): a click for a new
   (user, item) pair is produced to the topic; the time until ``/v1/users/{id}``
   lists the item is recorded (p50/p99).
5. ``--big-items``: in-process brute-force top-k p99, and with the HNSW index its p99
   and recall@10 against brute force.

Every phase records ``os.getloadavg()``: the box is shared, so compare figures
within one run (ratios), not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# One BLAS thread: on 2 cores a BLAS pool fights the event loop and the load generator
# for the same cores; requests, not threads inside one product, are the parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from online_models.snapshot import SnapshotStore  # noqa: E402
from serving.live import LiveContext  # noqa: E402
from serving.ranking import LoadedSnapshot, ScoreBatcher  # noqa: E402
from serving.synthetic_state import (  # noqa: E402
    random_bpr,
    random_history,
    random_popularity,
)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def ms(x: float) -> float:
    return round(x * 1000, 3)


# ----------------------------------------------------------------------------- load generator


class _Conn:
    """One keep-alive HTTP/1.1 connection (a minimal client: httpx's pool turned out
    CPU-bound on 2 cores at 300 req/s and became the bottleneck being measured)."""

    def __init__(self, host: str, port: int, headers: str = "") -> None:
        self.host, self.port, self.headers = host, port, headers  # headers: "K: v\r\n"...
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        req = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}\r\n"
        self.writer.write(req.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _open_loop(base: str, paths: list[str], rate: float, seconds: float,
                     headers: str = "") -> dict[str, Any]:
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    n = int(rate * seconds)
    lat: list[float] = []
    failures = 0
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(_Conn(host, int(port), headers))
    t0 = time.perf_counter() + 0.5

    async def one(i: int) -> None:
        nonlocal failures
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        try:
            status = await asyncio.wait_for(conn.get(paths[i % len(paths)]), 10.0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            ok = status == 200
            if not ok:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except Exception as exc:
            conn.close()
            ok = False
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            pool.put_nowait(conn)
        lat.append(time.perf_counter() - due)
        if not ok:
            failures += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    while not pool.empty():
        pool.get_nowait().close()
    return {
        "requests": n,
        "achieved_rps": round(n / wall, 1),
        "failures": failures,
        "errors": errors,
        "statuses": statuses,
        "p50_ms": ms(pct(lat, 50)),
        "p90_ms": ms(pct(lat, 90)),
        "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(max(lat) if lat else float("nan")),
    }


def loadgen_main(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.paths_file).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(_open_loop(args.base, spec["paths"], args.rate, args.seconds,
                                 spec["headers"]))
    print(json.dumps(out))


def run_load(base: str, paths: list[str], rate: float, seconds: float, tmp: Path,
             headers: str = "") -> dict[str, Any]:
    """The load generator in its own process (so it does not share our GIL); ``headers``
    (``"Name: value\r\n"`` lines) go with every request."""
    pf = tmp / f"paths-{uuid.uuid4().hex[:6]}.json"
    pf.write_text(json.dumps({"paths": paths, "headers": headers}))
    cmd = [
        sys.executable,
        __file__,
        "--loadgen",
        "--base",
        base,
        "--paths-file",
        str(pf),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"load generator failed: {res.stderr[-2000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``liverec serve`` in a subprocess."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        import httpx

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "LIVEREC_RELOAD_INTERVAL_S": "0.1",
            "LIVEREC_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liverec.cli",
                "serve",
                "--snapshots",
                str(root),
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            env=full_env,
        )
        deadline = time.monotonic() + 900  # an ANN server builds its index first
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during startup")
            time.sleep(0.2)
        raise RuntimeError("server not ready after 900 s")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(s.value)
        return float("nan")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- snapshot


def build(n_users: int, n_items: int, dim: int, clusters: int) -> dict[str, Any]:
    t = time.perf_counter()
    models = {
        "bpr": random_bpr(n_users, n_items, dim, clusters=clusters),
        "popularity": random_popularity(n_items),
    }
    history = random_history(n_users, n_items, per_user=20, clusters=clusters)
    print(f"  built {n_items} x {dim} models in {time.perf_counter() - t:.1f}s", flush=True)
    return {"models": models, "history": history}


def write(store: SnapshotStore, state: dict[str, Any]) -> int:
    return store.write(
        state["models"],
        history=state["history"],
        offsets={},
        events_total=0,
        watermark=time.time(),
    ).version


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def inprocess(
    snap: Any, users: list[str], n: int, ann: bool = False, ann_ef: int = 64
) -> dict[str, Any]:
    """Top-k latency through ``LoadedSnapshot.recommend`` (10 items, seen ones excluded).

    Exact runs also time a bare ``np.dot(V, q)`` on the same query, interleaved, as
    the floor; ANN runs report the index build time and recall@10 against exact.
    """
    t = time.perf_counter()
    loaded = LoadedSnapshot(snap, "bpr", ann=ann, ann_min_items=0, ann_ef=ann_ef)
    build_s = time.perf_counter() - t
    scorer = loaded.scorers["bpr"]
    live = LiveContext()
    lat, bare = [], []
    out_buf = np.empty(scorer.size, np.float32)
    for i in range(n):
        user = users[i % len(users)]
        t = time.perf_counter()
        loaded.recommend(user, 10, live=live)
        lat.append(time.perf_counter() - t)
        if not ann:
            q = scorer.query(user, ())
            assert q is not None  # every synthetic user is known
            t = time.perf_counter()
            np.dot(scorer.vectors, q, out=out_buf)
            bare.append(time.perf_counter() - t)
    out: dict[str, Any] = {"p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)), "load": load()}
    if bare:
        out["bare_matvec_p50_ms"] = ms(pct(bare, 50))
        out["bare_matvec_p99_ms"] = ms(pct(bare, 99))
    if ann:
        out["ef"] = ann_ef
        out["index_build_s"] = round(build_s, 1)
        exact = LoadedSnapshot(snap, "bpr")
        hits = 0
        for u in users[:500]:
            a = {i for i, _ in exact.recommend(u, 10, live=live).items}
            b = {i for i, _ in loaded.recommend(u, 10, live=live).items}
            hits += len(a & b)
        out["recall_at_10"] = round(hits / (10 * min(500, len(users))), 4)
    return out


def inprocess_concurrent(
    snap: Any, users: list[str], n: int, threads: int, batched: bool
) -> dict[str, Any]:
    """Closed loop: ``threads`` threads each ranking ``n / threads`` users back to back.

    Throughput of exact top-k (10 items, seen excluded) with one product per request
    or through a :class:`ScoreBatcher`, whose mean batch size is reported.
    """
    from concurrent.futures import ThreadPoolExecutor

    batcher = ScoreBatcher() if batched else None
    loaded = LoadedSnapshot(snap, "bpr", batcher=batcher)
    live = LiveContext()
    per = max(1, n // threads)

    def worker(w: int) -> list[float]:
        lat = []
        for i in range(per):
            t = time.perf_counter()
            loaded.recommend(users[(w * per + i) % len(users)], 10, live=live)
            lat.append(time.perf_counter() - t)
        return lat

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        lat = [x for part in pool.map(worker, range(threads)) for x in part]
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "threads": threads,
        "requests": len(lat),
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": ms(pct(lat, 50)),
        "p99_ms": ms(pct(lat, 99)),
        "load": load(),
    }
    if batcher is not None:
        batcher.stop()
        out["batches"] = batcher.batches
        out["mean_batch"] = round(batcher.queries / max(1, batcher.batches), 2)
        out["largest_batch"] = batcher.largest
    return out


# ----------------------------------------------------------------------------- phases


def freshness(root: Path, clicks: int, tmp: Path) -> dict[str, Any]:
    import httpx
    from stream.trainer import TrainerSettings

    from stream.broker import resolve_bootstrap
    from stream.events import ClickEvent, encode, event_key
    from stream.kafka import create_topics, deliver, make_producer

    kafka = resolve_bootstrap(tmp / "kafka")
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(kafka.bootstrap, {topic: 4})
        server = Server(root, {"LIVEREC_BOOTSTRAP": kafka.bootstrap, "LIVEREC_TOPIC": topic})
        producer = make_producer(kafka.bootstrap)
        lat = []
        try:
            time.sleep(2.0)  # let the tail assign partitions
            from datetime import UTC, datetime

            for c in range(clicks):
                user, item = f"fresh-u{c}-{uuid.uuid4().hex[:4]}", f"fresh-i{c}"
                ev = ClickEvent(f"f{c}-{uuid.uuid4().hex}", user, item, "click", datetime.now(UTC))
                t0 = time.perf_counter()
                deliver(producer, topic, encode(ev), event_key(ev))
                while time.perf_counter() - t0 < 30:
                    body = httpx.get(f"{server.base}/v1/users/{user}", timeout=5).json()
                    if item in body["live_items"]:
                        break
                    time.sleep(0.005)
                lat.append(time.perf_counter() - t0)
        finally:
            producer.close()
            server.close()
        ts = TrainerSettings()
        interval = ts.snapshot_every_s
        batch_wait = ts.max_wait_ms / 1000
        target = 1.5 * interval + batch_wait
        return {
            "clicks": clicks,
            "p50_s": round(pct(lat, 50), 4),
            "p99_s": round(pct(lat, 99), 4),
            "target_median_s": target,
            "trainer_snapshot_every_s": interval,
            "batch_wait_s": batch_wait,
            "load": load(),
        }
    finally:
        kafka.close()


def swaps_under_load(
    server: Server,
    store: SnapshotStore,
    state: dict[str, Any],
    rec_paths: list[str],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """Recommendations at ``--rate`` while ``--swaps`` snapshots are written and swapped in."""
    before = server.metric("liverec_serving_snapshot_reloads_total", {"outcome": "ok"})
    stop = threading.Event()
    written: list[float] = []

    def writer() -> None:
        import httpx

        time.sleep(1.0)
        while len(written) < args.swaps and not stop.is_set():
            t = time.perf_counter()
            version = write(store, state)
            written.append(time.perf_counter() - t)
            # Paced by the server: the next snapshot is written once this one serves,
            # so every write is a swap (a faster writer only makes it skip versions).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    seen = httpx.get(f"{server.base}/readyz", timeout=5).json()
                    if seen.get("snapshot_version") == version:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)

    th = threading.Thread(target=writer)
    th.start()
    swap_seconds = max(args.seconds, 1.0 + args.swaps * 1.2 + 5)
    out = run_load(server.base, rec_paths, args.rate, swap_seconds, tmp)
    stop.set()
    th.join()
    time.sleep(1.0)
    after = server.metric("liverec_serving_snapshot_reloads_total", {"outcome": "ok"})
    out["snapshots_written"] = len(written)
    out["server_swaps"] = after - before
    out["write_s_median"] = round(pct(written, 50), 3)
    out["load"] = load()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--paths-file", help=argparse.SUPPRESS)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--swaps", type=int, default=50)
    p.add_argument("--big-items", type=int, default=1_000_000)
    p.add_argument("--freshness-clicks", type=int, default=40)
    p.add_argument("--no-kafka", action="store_true")
    p.add_argument(
        "--clusters", type=int, default=1000, help="factor clusters (0: i.i.d. Gaussian factors)"
    )
    configs = ["brute", "batched", "batched-2slots", "batched-worker", "ann"]
    p.add_argument("--configs", nargs="*", default=configs, choices=configs)
    p.add_argument("--swap-config", default="batched", choices=configs)
    p.add_argument(
        "--inprocess-threads",
        type=int,
        default=8,
        help="threads of the in-process closed-loop throughput comparison",
    )
    p.add_argument("--ann-ef", type=int, default=128)
    p.add_argument("--no-iid-recall", dest="iid_recall", action="store_false")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    args = p.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return

    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"}}
    results["args"] = json.loads(json.dumps(results["args"], default=str))
    results["load_start"] = load()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    rng = random.Random(0)
    try:
        print(f"[1] snapshot {args.items} x {args.dim}", flush=True)
        state = build(args.users, args.items, args.dim, args.clusters)
        store = SnapshotStore(tmp / "snaps", keep=4)
        write(store, state)
        users = [f"u{rng.randrange(args.users)}" for _ in range(5000)]
        snap = store.load()
        results["inprocess_exact"] = inprocess(snap, users, 3000)
        print("   in-process exact", results["inprocess_exact"], flush=True)
        for batched in (False, True):
            key = "inprocess_concurrent_" + ("batched" if batched else "single")
            results[key] = inprocess_concurrent(snap, users, 3000, args.inprocess_threads, batched)
            print(f"   {key}", results[key], flush=True)
        if "ann" in args.configs:
            results["inprocess_ann"] = inprocess(snap, users, 3000, ann=True, ann_ef=args.ann_ef)
            print("   in-process ann", results["inprocess_ann"], flush=True)
            if args.iid_recall:
                iid = build(args.users, args.items, args.dim, 0)
                istore = SnapshotStore(tmp / "iid", keep=1)
                write(istore, iid)
                del iid
                results["inprocess_ann_iid"] = {
                    f"ef{ef}": inprocess(istore.load(), users, 500, ann=True, ann_ef=ef)
                    for ef in (args.ann_ef,)
                }
                shutil.rmtree(istore.root, ignore_errors=True)
                print("   in-process ann, i.i.d. factors", results["inprocess_ann_iid"], flush=True)
        del snap

        rec_paths = [f"/v1/recommendations?user_id={u}&k=10&model=bpr" for u in users]
        for config in args.configs:
            env = {
                "brute": {"LIVEREC_RANK_BATCH": "false"},
                "batched": {"LIVEREC_RANK_BATCH": "true"},
                "batched-2slots": {"LIVEREC_RANK_BATCH": "true", "LIVEREC_RANK_BATCH_SLOTS": "2"},
                "batched-worker": {
                    "LIVEREC_RANK_BATCH": "true",
                    "LIVEREC_RANK_BATCH_INLINE": "false",
                },
                # ANN with the server's defaults otherwise (batching only serves the
                # exact path; the index path ranks each request on its own).
                "ann": {
                    "LIVEREC_ANN": "true",
                    "LIVEREC_ANN_MIN_ITEMS": "0",
                    "LIVEREC_ANN_EF": str(args.ann_ef),
                },
            }[config]
            server = Server(store.root, env)
            try:
                print(
                    f"[2:{config}] /healthz vs /v1/recommendations at {args.rate} req/s", flush=True
                )
                out: dict[str, Any] = {}
                out["healthz"] = run_load(server.base, ["/healthz"], args.rate, args.seconds, tmp)
                out["recommendations"] = run_load(
                    server.base, rec_paths, args.rate, args.seconds, tmp
                )
                out["healthz_after"] = run_load(
                    server.base, ["/healthz"], args.rate, args.seconds, tmp
                )
                floor = max(out["healthz"]["p99_ms"], out["healthz_after"]["p99_ms"])
                out["ratio_p99"] = round(out["recommendations"]["p99_ms"] / floor, 3)
                out["load"] = load()
                results[f"http_{config}"] = out
                print(f"   {config}", json.dumps(out), flush=True)

                if config == args.swap_config:
                    print(f"[3:{config}] {args.swaps} swaps under load", flush=True)
                    results["swaps"] = swaps_under_load(server, store, state, rec_paths, args, tmp)
                    print("   swaps", results["swaps"], flush=True)
            finally:
                server.close()

        if not args.no_kafka and args.freshness_clicks > 0:
            print("[4] freshness via Kafka", flush=True)
            results["freshness"] = freshness(store.root, args.freshness_clicks, tmp)
            print("   freshness", results["freshness"], flush=True)

        if args.big_items:
            print(f"[5] {args.big_items} items", flush=True)
            del state
            shutil.rmtree(store.root, ignore_errors=True)
            big = build(args.users, args.big_items, args.dim, args.clusters)
            bstore = SnapshotStore(tmp / "big", keep=1)
            write(bstore, big)
            del big
            bsnap = bstore.load()
            results["big_exact"] = inprocess(bsnap, users, 500)
            print("   exact", results["big_exact"], flush=True)
            ratio = results["big_exact"]["p99_ms"] / results["inprocess_exact"]["p99_ms"]
            results["big_vs_100k_p99_ratio"] = round(ratio, 2)
            results["big_ann"] = inprocess(bsnap, users, 2000, ann=True, ann_ef=args.ann_ef)
            print("   ann", results["big_ann"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
