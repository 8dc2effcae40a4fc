"""Latency of lone writes to a running server's ``POST /v1/events`` (one event, then a
pause, as a web shop's traffic looks at low rates): the case where a write waits for
its own delivery report and nothing else keeps the sender busy.

Run against a server started with a bootstrap (``liverec serve --snapshots DIR``, with
``LIVEREC_KAFKA_BOOTSTRAP`` set)::

    .venv/bin/python bench/bench_post_latency.py http://127.0.0.1:8000 --writes 60

Prints the median, 90th percentile and maximum of the writes after the first five.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the server's base URL")
    ap.add_argument("--writes", type=int, default=60, help="writes, the first five unmeasured")
    ap.add_argument("--pause-s", type=float, default=0.05, help="pause between writes")
    ap.add_argument("--api-key", default=None, help="a write key, if the server wants one")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    took: list[float] = []
    with httpx.Client(base_url=args.url, timeout=10, headers=headers) as client:
        for k in range(args.writes):
            event = {"event_id": f"lat-{time.time_ns()}-{k}", "user_id": f"u{k % 7}",
                     "item_id": f"i{k % 13}", "event_type": "click", "timestamp": time.time()}
            t0 = time.perf_counter()
            resp = client.post("/v1/events", json=event)
            took.append(time.perf_counter() - t0)
            resp.raise_for_status()
            time.sleep(args.pause_s)
    ms = sorted(1e3 * t for t in took[5:])
    print(f"POST /v1/events, {len(ms)} lone writes: median {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
