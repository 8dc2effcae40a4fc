"""A plugin model in a container: the README's recipe (a wheel of the plugin installed
on top of the liverec image) gives an image whose ``liverec`` knows the model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.system.helpers import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]

DOCKERFILE = """\
FROM {image}
USER root
COPY *.whl /tmp/
RUN pip install --no-deps /tmp/*.whl && rm /tmp/*.whl
USER liverec
"""


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_a_plugin_wheel_installed_in_the_image_is_a_model_there(
        images: dict[str, str], tmp_path: Path) -> None:
    base = images.get("LIVEREC_IMAGE", "liverec:latest")
    src = tmp_path / "src"  # a copy: building leaves build/ and an egg-info in the source
    shutil.copytree(REPO / "examples" / "plugin-model", src)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-w", str(tmp_path), str(src))
    assert built.returncode == 0, built.stderr[-2000:]
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.format(image=base))
    tag = f"liverec-plugin-test:{uuid.uuid4().hex[:8]}"
    out = _run("docker", "build", "-q", "-t", tag, str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    try:
        check = _run("docker", "run", "--rm", tag, "models", "check", "transitions")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "transitions: all 14 checks passed" in check.stdout
        listed = _run("docker", "run", "--rm", tag, "models", "list")
        assert "liverec-transitions 0.1.0" in listed.stdout
        plain = _run("docker", "run", "--rm", base, "models", "list")
        assert plain.returncode == 0 and " transitions " not in plain.stdout
    finally:
        _run("docker", "rmi", "-f", tag)
