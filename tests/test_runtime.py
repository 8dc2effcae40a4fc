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
