"""Latency cost of API-key checking and rate limiting on the read path, at a fixed rate.

Run (about 3 minutes on 2 cores):

    .venv/bin/python bench/bench_auth.py --rate 300 --seconds 15 --rounds 2

Three ``liverec serve`` processes on the same small BPR snapshot run side by side:

* ``open``: no key, rate limits off (``LIVEREC_RATE_READ_PER_S=0``): the baseline;
* ``ratelimit``: anonymous reads through the per-address token bucket (a limit far
  above the offered rate, so every request takes a token and none is refused);
* ``keys+ratelimit``: ``LIVEREC_REQUIRE_READ_KEY=true``, every request carries a
  valid key (``Authorization: Bearer``), checked and rate limited per key.

The load generator (its own process, keep-alive connections, open loop: request
``i`` is due at ``t0 + i / rate`` and its latency counts from then) sends
``/v1/recommendations`` and ``/v1/items/{id}`` alternately; rounds interleave the
configurations (each round starting with the next one) so drift in the shared box's
load hits all three alike. Reported:
p50/p99 per configuration (median over rounds), the p99 ratio to ``open`` from the
same run, and the in-process cost of the checks per request (no HTTP), which the
shared box's load disturbs far less than a p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_serving import Server, build, run_load, write  # noqa: E402
from online_models.snapshot import SnapshotStore  # noqa: E402
from serving.auth import KeyFile  # noqa: E402


def inprocess_cost(key_file: Path, key: str, n: int = 20_000) -> dict[str, float]:
    """Microseconds per call of the checks themselves (no HTTP), median of 5 repeats."""
    from starlette.requests import Request

    from serving.auth import AccessControl, AuthSettings
    from serving.ratelimit import RateLimitSettings

    limits = RateLimitSettings(read_per_s=1e9, read_burst=1e9)
    keyed = AccessControl(AuthSettings(api_keys_file=key_file, require_read_key=True), limits)
    anon = AccessControl(AuthSettings(), limits)
    request = Request({"type": "http", "client": ("127.0.0.1", 1), "headers": []})

    async def loop(access: AccessControl, presented: str | None) -> float:
        await access.authorize(request, "read", presented)  # pays the one scrypt
        t = time.perf_counter()
        for _ in range(n):
            await access.authorize(request, "read", presented)
        return (time.perf_counter() - t) / n * 1e6

    out = {}
    for name, access, presented in (("ratelimit_only_us", anon, None),
                                    ("key_and_ratelimit_us", keyed, key)):
        out[name] = round(float(np.median([asyncio.run(loop(access, presented))
                                           for _ in range(5)])), 2)
    t = time.perf_counter()
    from serving.auth import hash_key

    hash_key(key)
    out["first_use_scrypt_ms"] = round((time.perf_counter() - t) * 1000, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "auth.json")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="liverec-bench-auth-"))
    store = SnapshotStore(tmp / "snaps")
    state = build(2_000, args.items, 32, 20)
    write(store, state)
    kf = KeyFile(tmp / "keys")
    key = kf.add("bench", {"read"})
    common = {"LIVEREC_DEFAULT_MODEL": "bpr"}
    configs: dict[str, tuple[dict[str, str], str]] = {
        "open": ({**common, "LIVEREC_RATE_READ_PER_S": "0"}, ""),
        "ratelimit": ({**common, "LIVEREC_RATE_READ_PER_S": "100000",
                       "LIVEREC_RATE_READ_BURST": "100000"}, ""),
        "keys+ratelimit": ({**common, "LIVEREC_API_KEYS_FILE": str(kf.path),
                            "LIVEREC_REQUIRE_READ_KEY": "true",
                            "LIVEREC_RATE_READ_PER_S": "100000",
                            "LIVEREC_RATE_READ_BURST": "100000"},
                           f"Authorization: Bearer {key}\r\n"),
    }
    rng = random.Random(0)
    users = [f"u{rng.randrange(2_000):06d}" for _ in range(500)]
    items = [str(i) for i in state["models"]["bpr"].items.ids[:500]]
    paths = [x for u, i in zip(users, items, strict=True)
             for x in (f"/v1/recommendations?user_id={u}&k=10", f"/v1/items/{i}")]
    cost = inprocess_cost(kf.path, key)
    print(f"in-process cost per request: {cost}", flush=True)
    servers = {name: Server(store.root, env) for name, (env, _) in configs.items()}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    try:
        for name, (_, headers) in configs.items():  # warm-up: scrypt once, caches, JIT-ish
            run_load(servers[name].base, paths, args.rate, 2, tmp, headers)
        names = list(configs)
        for r in range(args.rounds):
            # Each round starts with another configuration: no one always runs first.
            for name in names[r % len(names):] + names[: r % len(names)]:
                headers = configs[name][1]
                res = run_load(servers[name].base, paths, args.rate, args.seconds, tmp,
                               headers)
                res["load"] = [round(x, 2) for x in os.getloadavg()]
                results[name].append(res)
                print(f"round {r + 1} {name:15s} {res}", flush=True)
    finally:
        for s in servers.values():
            s.close()
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "p50_ms": round(float(np.median([x["p50_ms"] for x in runs])), 3),
            "p99_ms": round(float(np.median([x["p99_ms"] for x in runs])), 3),
            "non_200": sum(v for x in runs for k, v in x["statuses"].items() if k != "200"),
        }
    base = summary["open"]["p99_ms"]
    for name in summary:
        summary[name]["p99_vs_open"] = round(summary[name]["p99_ms"] / base, 3)
    out = {"args": {k: v for k, v in vars(args).items() if k != "out"},
           "inprocess": cost, "runs": results, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
