"""``serving.app._check_descriptors``: the server raises its soft descriptor limit to
what ``max_connections`` needs where the hard limit allows, and warns where not."""

from __future__ import annotations

import logging
import resource

import pytest

from serving import app as app_module


def _limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    set_to: list[tuple[int, int]] = []

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if limits[0] > hard:
            raise ValueError("not allowed to raise maximum limit")
        set_to.append(limits)

    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return set_to


def test_the_soft_limit_is_raised_within_the_hard_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_to = _limits(monkeypatch, 256, 4096)
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        app_module._check_descriptors(1000)
    assert set_to == [(1000 + app_module.DESCRIPTOR_MARGIN, 4096)]
    assert not caplog.records


def test_a_hard_limit_below_the_cap_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_to = _limits(monkeypatch, 256, 512)
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        app_module._check_descriptors(1000)
    assert set_to == [(512, 512)]
    assert "descriptor limit (512) is below LIVEREC_MAX_CONNECTIONS (1000)" in caplog.text


def test_enough_descriptors_change_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_to = _limits(monkeypatch, 20000, 20000)
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        app_module._check_descriptors(1000)
    assert set_to == [] and not caplog.records
