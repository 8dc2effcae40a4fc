"""The process-wide settings (allocator, umask) every liverec command applies at start-up."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from liverec.runtime import pad_malloc_top, pin_malloc_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pins_the_mmap_threshold_on_glibc() -> None:
    assert pin_malloc_mmap_threshold(1 << 20) is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pads_the_heap_top_on_glibc() -> None:
    assert pad_malloc_top(1 << 20) is True


def test_the_cli_applies_it_before_a_command_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from liverec import cli, runtime

    calls: list[str] = []

    def pin() -> bool:
        calls.append("pinned")
        return True

    def pad(nbytes: int = runtime.DEFAULT_TOP_PAD) -> bool:
        calls.append(f"padded {nbytes >> 20} MiB")
        return True

    monkeypatch.setattr(runtime, "pin_malloc_mmap_threshold", pin)
    monkeypatch.setattr(runtime, "pad_malloc_top", pad)
    out = tmp_path / "clicks.csv"
    result = CliRunner().invoke(cli.app, ["generate", "--events", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # the trim threshold stays at 128 KiB once a threshold is set: the pad keeps the top
    assert calls == ["pinned", "padded 8 MiB"]


def test_evaluate_pads_the_heap_top_instead(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liverec import cli, runtime

    calls: list[str] = []
    monkeypatch.setattr(runtime, "pin_malloc_mmap_threshold", lambda: calls.append("pinned"))
    monkeypatch.setattr(runtime, "pad_malloc_top",
                        lambda nbytes=runtime.DEFAULT_TOP_PAD: calls.append(
                            f"padded {nbytes >> 20} MiB"))
    data = tmp_path / "clicks.csv"
    runner = CliRunner()
    made = runner.invoke(cli.app, ["generate", "--events", "300", "--out", str(data)])
    assert made.exit_code == 0, made.output
    assert calls == ["pinned", "padded 8 MiB"]
    calls.clear()
    result = runner.invoke(cli.app, ["evaluate", str(data), "--models", "popularity"])
    assert result.exit_code == 0, result.output
    assert calls == ["padded 256 MiB"]  # evaluate allocates big temporaries many times a second


def test_the_cli_keeps_files_from_other_users(tmp_path: Path) -> None:
    """Every command masks off others' permissions (snapshots, the broker's logs and
    the demo's run directory hold click histories); LIVEREC_UMASK replaces the mask."""
    import subprocess
    import sys

    liverec = Path(sys.executable).with_name("liverec")
    env = {k: v for k, v in os.environ.items() if k != "LIVEREC_UMASK"}

    def mode_of(out: Path, **more: str) -> int:
        subprocess.run([str(liverec), "generate", "--events", "5", "--out", str(out)],
                       env={**env, **more}, check=True, capture_output=True,
                       preexec_fn=lambda: os.umask(0o022))
        return out.stat().st_mode & 0o777

    assert mode_of(tmp_path / "a.csv") == 0o640
    assert mode_of(tmp_path / "b.csv", LIVEREC_UMASK="022") == 0o644
    bad = subprocess.run([str(liverec), "generate", "--events", "5", "--out",
                          str(tmp_path / "c.csv")], env={**env, "LIVEREC_UMASK": "999"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "LIVEREC_UMASK must be an octal mask" in bad.stderr
    assert not (tmp_path / "c.csv").exists()


def test_the_runtime_doctests() -> None:
    """liverec/ is not among pytest's doctest paths: its examples run here."""
    import doctest

    import liverec.runtime

    result = doctest.testmod(liverec.runtime)
    assert result.attempted >= 4 and result.failed == 0
