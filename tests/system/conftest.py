"""Fixtures of the container tests (``test_compose*.py``), shared by the whole session:
one Docker engine (the running one, else one started here and stopped at the end) and
one build of the local images, whichever compose module runs first."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.system.helpers import REPO

ENGINE = REPO / "scripts" / "docker-engine.sh"
BUILD = REPO / "scripts" / "build-images.sh"
IMAGES_ENV = REPO / "deploy" / "docker" / "local-images.env"


def _docker_answers() -> bool:
    try:
        out = subprocess.run(["docker", "version"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2) where installed, else Debian's ``docker-compose`` (v1)."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        out = subprocess.run([*cli, "version"], capture_output=True, timeout=30)
        if out.returncode == 0:
            return cli
    return None


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    """A Docker engine: the running one, else one started here and stopped afterwards."""
    if os.environ.get("LIVEREC_DOCKER", "").strip() == "0":
        pytest.skip("LIVEREC_DOCKER=0: Docker is left alone")
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (scripts/system-deps.sh installs docker.io)")
    started = False
    if not _docker_answers():
        # Developers share machines: a bare pytest run must not start an engine that
        # others' Kafka fixtures would then pick up. make test (and CI) may.
        allowed = os.environ.get("LIVEREC_DOCKER", "1" if os.environ.get("CI") else "0")
        if allowed != "1":
            print("docker tests skipped: no Docker engine answers")
            pytest.skip("no Docker engine answers (make test starts one; LIVEREC_DOCKER=1 "
                        "lets this test start it)")
        out = subprocess.run(["bash", str(ENGINE), "start"], capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            reason = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "unknown"
            print(f"docker tests skipped: {reason}")
            pytest.skip(f"no Docker engine could be started: {reason}")
        # Ours to stop only if start launched it (it may have waited for another run's)
        started = "starting dockerd" in out.stderr
    try:
        yield
    finally:
        if started:
            subprocess.run(["bash", str(ENGINE), "stop"], timeout=120)


@pytest.fixture(scope="session")
def images(engine: None) -> dict[str, str]:
    """Build (or find cached) the local images; returns the compose variables for them."""
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=2400,
                         cwd=REPO)
    assert out.returncode == 0, f"scripts/build-images.sh failed:\n{out.stderr[-4000:]}"
    print(f"\nbuild-images.sh: {time.monotonic() - t0:.0f} s\n{out.stderr.strip()}")
    env = dict(line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines()
               if line and not line.startswith("#"))
    return env
