"""The allocator setting every liverec command applies at start-up."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from liverec.runtime import pin_malloc_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pins_the_mmap_threshold_on_glibc() -> None:
    assert pin_malloc_mmap_threshold(1 << 20) is True


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
