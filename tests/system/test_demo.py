"""``liverec demo --duration N --summary-json F`` on a real broker: exits 0, sane figures,
nothing left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from online_models.snapshot import SnapshotStore
from tests.system.helpers import LIVEREC

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def _ours(run_dir: Path) -> list[psutil.Process]:
    """Processes whose command line mentions the demo's run dir (its children do)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(run_dir) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_demo_runs_for_a_duration_and_writes_its_summary(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    env["LIVEREC_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    out = subprocess.run(
        [LIVEREC, "demo", "--duration", "40", "--summary-json", str(summary),
         "--run-dir", str(run_dir), "--status-every-s", "5"],
        capture_output=True, text=True, env=env, timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "/dashboard" in out.stdout and "curl " in out.stdout
    # The sample query names a user who clicked (one the model knows), not a made-up id
    # that could only get the popularity fallback.
    suggested = re.search(r"/v1/recommendations\?user_id=([^&']+)&", out.stdout)
    assert suggested is not None, out.stdout[-3000:]
    assert "events in" in out.stdout  # at least one status line
    figures = json.loads(summary.read_text())
    assert figures["events_produced"] > 0
    assert 0 < figures["events_learned"] <= figures["events_produced"]
    assert 0 <= figures["events_capped"] <= figures["events_produced"]
    assert 0 < figures["hr@10"] <= 1
    # ... and the evidence it rests on: the rolling window's evaluated events
    assert figures["hr@10_evaluated_events_by_model"]["itemknn"] > 0
    assert figures["snapshot_version"] >= 1
    assert figures["recommendations_served"] > 0
    assert figures["freshness_p50_s"] is not None and figures["freshness_p50_s"] >= 0
    assert (run_dir / "logs" / "trainer.log").stat().st_size > 0
    assert (run_dir / "snapshots" / "LATEST").exists()
    # Users' click histories are not for every local user to read (liverec's umask).
    for path in [run_dir / "snapshots", *(run_dir / "snapshots").rglob("*")]:
        assert path.stat().st_mode & 0o007 == 0, (path, oct(path.stat().st_mode))
    assert suggested.group(1) in SnapshotStore(run_dir / "snapshots").load().history
    assert _ours(run_dir) == [], "the demo left processes behind"


def test_demo_stops_cleanly_on_interrupt(kafka_bootstrap: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    env["LIVEREC_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    log = tmp_path / "demo.out"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [LIVEREC, "demo", "--run-dir", str(run_dir), "--status-every-s", "2"],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
        try:
            deadline = time.monotonic() + 240
            while "events in" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            assert _ours(run_dir), "no trainer/server running while the demo streams"
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "summary: " in text
    # The shutdown says what it waits for, server first, and how each stop went.
    serving = text.index("waiting for the server")
    trainer = text.index("waiting for the trainer")
    assert serving < trainer and "last snapshot" in text[trainer:], text[-3000:]
    assert re.search(r"trainer stopped in \d+\.\d s", text), text[-3000:]
    assert _ours(run_dir) == [], "the demo left processes behind"


@pytest.mark.parametrize("presses", [1, 2, "during-stop"])
def test_ctrl_c_in_a_terminal_stops_the_demos_own_broker_last(tmp_path: Path,
                                                              presses: int | str) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group. The broker the
    demo started must not be in it: it would stop first, and the trainer could then
    neither commit nor stop in time (it was killed after 15 s). A second Ctrl-C during
    the stop used to interrupt it, and the broker stopped before the trainer."""
    from stream.broker import cache_dir

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    cache.mkdir()
    jars = cache_dir() / "kafka-4.1.1"
    if jars.exists():  # the jars of earlier runs; the broker state file stays ours
        (cache / "kafka-4.1.1").symlink_to(jars)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    env |= {"LIVEREC_CACHE_DIR": str(cache), "LIVEREC_DOCKER": "0"}
    log = tmp_path / "demo.out"
    # "during-stop": the run ends by itself (--duration), and Ctrl-C comes while it stops
    wait_for = "waiting for the " if presses == "during-stop" else "events in"
    more = ["--duration", "15"] if presses == "during-stop" else []
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [LIVEREC, "demo", "--run-dir", str(run_dir), "--status-every-s", "2", *more],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while wait_for not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGINT)  # as the terminal does
            if presses == 2:
                time.sleep(0.3)
                os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Kafka (local)" in text, text[:2000]
    assert re.search(r"trainer stopped in \d+\.\d s", text), text[-3000:]
    assert "killed after" not in text, text[-3000:]
    # The broker went last, after the trainer's final commit.
    assert text.index("trainer stopped in") < text.index("Kafka broker stopped in"), text[-3000:]
    assert "commit failed" not in (run_dir / "logs" / "trainer.log").read_text()
    assert "summary: {" in text, text[-3000:]
    if presses != 1:
        assert "already stopping, in order" in text, text[-3000:]
    left = [p for p in psutil.process_iter(["cmdline"])
            if any(str(cache) in part for part in p.info["cmdline"] or ())]
    assert _ours(run_dir) == [] and left == [], "the demo left processes behind"
