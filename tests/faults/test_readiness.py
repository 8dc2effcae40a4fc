"""Issue 10 item 3 (and issue 11 item 6): /readyz tells the truth about Kafka.

A server configured for Kafka the way the README says (``LIVEREC_KAFKA_BOOTSTRAP``)
must not look ready while it cannot reach it: the body names each dependency's
state, ``liverec_serving_degraded`` says why, and an operator who prefers reads to stay
in rotation (``LIVEREC_READY_REQUIRES_KAFKA=false``) still sees "degraded".
"""

from __future__ import annotations

from pathlib import Path

import httpx

from stream.broker import free_port
from tests.faults.helpers import ServerProcess, metric, wait_for, write_snapshot


def test_readyz_lists_dependencies_and_never_hides_kafka(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "snaps")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    strict = ServerProcess(tmp_path / "snaps", tmp_path / "strict.log",
                           env={"LIVEREC_KAFKA_BOOTSTRAP": dead})
    lenient = ServerProcess(tmp_path / "snaps", tmp_path / "lenient.log",
                            env={"LIVEREC_KAFKA_BOOTSTRAP": dead,
                                 "LIVEREC_READY_REQUIRES_KAFKA": "false"})
    plain = ServerProcess(tmp_path / "snaps", tmp_path / "plain.log")
    try:
        for s in (strict, lenient, plain):
            s.wait_listening()
        # Configured through LIVEREC_KAFKA_BOOTSTRAP, down: not ready, and says why.
        r = wait_for(lambda: (x := httpx.get(f"{strict.base}/readyz")).status_code == 503
                     and x.json()["dependencies"]["snapshot"]["state"] == "loaded" and x,
                     30, "strict readyz")
        body = r.json()
        assert body["ready"] is False and body["status"] == "not_ready"
        assert body["dependencies"]["kafka_tail"]["state"] in ("connecting", "disconnected")
        assert body["dependencies"]["kafka_producer"]["state"] == "connecting"
        assert "kafka_tail" in body["reason"] and "kafka_producer" in body["reason"]
        assert httpx.head(f"{strict.base}/readyz").status_code == 503
        for reason in ("kafka_tail_disconnected", "kafka_producer_unavailable"):
            assert metric(strict.base, "liverec_serving_degraded", {"reason": reason}) == 1.0
        assert metric(strict.base, "liverec_serving_degraded", {"reason": "no_snapshot"}) == 0.0
        # The read path's probe: reads work without Kafka, so that server is ready for
        # them (a load balancer of reads keeps it), and still says "degraded".
        r = httpx.get(f"{strict.base}/readyz", params={"scope": "read"})
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
        assert httpx.get(f"{strict.base}/v1/recommendations",
                         params={"user_id": "u000001"}).status_code == 200

        # Lenient: stays in rotation for reads, but reports "degraded" all the same.
        r = wait_for(lambda: (x := httpx.get(f"{lenient.base}/readyz")).status_code == 200
                     and x, 30, "lenient readyz")
        assert r.json()["status"] == "degraded"
        assert r.json()["dependencies"]["kafka_producer"]["state"] == "connecting"
        assert metric(lenient.base, "liverec_serving_degraded",
                      {"reason": "kafka_producer_unavailable"}) == 1.0

        # No Kafka configured at all: ready, and the body says Kafka is disabled.
        r = wait_for(lambda: (x := httpx.get(f"{plain.base}/readyz")).status_code == 200
                     and x, 30, "plain readyz")
        assert r.json()["status"] == "ready"
        assert r.json()["dependencies"]["kafka_tail"]["state"] == "disabled"
        assert metric(plain.base, "liverec_serving_degraded",
                      {"reason": "kafka_tail_disconnected"}) == 0.0
    finally:
        for s in (strict, lenient, plain):
            s.stop()


def test_a_snapshot_root_without_a_snapshot_is_named_at_start(tmp_path: Path) -> None:
    """A mistyped --snapshots must not pass quietly: the log names the directory at
    start, and /readyz stays 503 with the reason."""
    missing, extra = tmp_path / "no-such-dir", tmp_path / "extra"
    server = ServerProcess(missing, tmp_path / "serve.log", "--extra-snapshots", str(extra))
    try:
        server.wait_listening()
        r = httpx.get(f"{server.base}/readyz")
        assert r.status_code == 503 and "snapshot" in r.json()["reason"], r.text
        log = server.log_text()
        waits = "(the directory does not exist; the server waits for it to appear and " \
            "does not create it)"
        assert f"no snapshot under {missing.resolve()} yet {waits}" \
            f": /readyz answers 503" in log, log[-2000:]
        assert f"no snapshot under --extra-snapshots {extra.resolve()} yet {waits}: its " \
            "models are not served, and /readyz says degraded" in log
        # The server only reads: it created neither (a typo is not made a directory).
        assert not missing.exists() and not extra.exists()
    finally:
        server.stop()
    # A root with a snapshot is not named, even without a LATEST pointer.
    write_snapshot(tmp_path / "snaps")
    (tmp_path / "snaps" / "LATEST").unlink()
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve2.log")
    try:
        server.wait_listening()
        assert "no snapshot under" not in server.log_text()
    finally:
        server.stop()
