"""``liverec --version`` and ``liverec_build_info`` name the installed version."""

from __future__ import annotations

import platform
from importlib.metadata import version

from typer.testing import CliRunner

from liverec import __version__, cli
from serving.metrics import ServingMetrics
from trainer.metrics import TrainerMetrics


def test_version_option_prints_the_installed_version() -> None:
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"liverec {version('liverec')} (Python {platform.python_version()})")
    assert __version__ == version("liverec")


def test_both_processes_export_their_build() -> None:
    labels = {"version": version("liverec"), "python": platform.python_version()}
    for registry in (ServingMetrics().registry,
                     TrainerMetrics(models=["popularity"], topic="clicks").registry):
        assert registry.get_sample_value("liverec_build_info", labels) == 1.0


def test_python_dash_m_liverec_is_the_liverec_command() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "liverec", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(f"liverec {version('liverec')} ")
