"""The allocator setting every liverec command applies at start-up."""

from __future__ import annotations

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

    from liverec import cli

    calls: list[str] = []

    def pin() -> bool:
        calls.append("pinned")
        return True

    monkeypatch.setattr(cli, "pin_malloc_mmap_threshold", pin)
    out = tmp_path / "clicks.csv"
    result = CliRunner().invoke(cli.app, ["generate", "--events", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == ["pinned"]


def test_evaluate_pads_the_heap_top_instead(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liverec import cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "pin_malloc_mmap_threshold", lambda: calls.append("pinned"))
    monkeypatch.setattr(cli, "pad_malloc_top", lambda: calls.append("padded"))
    data = tmp_path / "clicks.csv"
    runner = CliRunner()
    made = runner.invoke(cli.app, ["generate", "--events", "300", "--out", str(data)])
    assert made.exit_code == 0, made.output
    assert calls == ["pinned"]
    calls.clear()
    result = runner.invoke(cli.app, ["evaluate", str(data), "--models", "popularity"])
    assert result.exit_code == 0, result.output
    assert calls == ["padded"]  # evaluate allocates big temporaries many times a second
