"""Ordinary mistakes on the command line get a one-line error and a non-zero exit,
never a traceback."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverec import cli


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.csv"
    p.write_text("a,b\n1,2\n")
    return p


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def _fails_cleanly(args: list[str], expect: str) -> None:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code in (1, 2), result.output
    # an uncaught exception would be kept here (a clean exit is a SystemExit)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert expect in " ".join(result.output.split()), result.output


def test_serve_refuses_bad_settings_a_busy_port_and_a_bad_item_features_file(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_port: int
) -> None:
    _fails_cleanly(["serve", "--port", "70000"], "less than or equal to 65535")
    with monkeypatch.context() as env:  # a rate limit variable: before uvicorn starts
        env.setenv("LIVEREC_RATE_WRITE_PER_S", "fast")
        _fails_cleanly(["serve", "--snapshots", str(tmp_path / "s")],
                       "error: LIVEREC_RATE_WRITE_PER_S: Input should be a valid number")
    with monkeypatch.context() as env:  # a Kafka setting ServeSettings reads inside
        env.setenv("LIVEREC_PARTITIONS", "x")
        _fails_cleanly(["serve", "--snapshots", str(tmp_path / "s")],
                       "error: LIVEREC_PARTITIONS: Input should be a valid integer")
    with monkeypatch.context() as env:  # a bound the routes hold too
        env.setenv("LIVEREC_MAX_ID_CHARS", "512")
        _fails_cleanly(["serve", "--snapshots", str(tmp_path / "s")],
                       "error: LIVEREC_MAX_ID_CHARS: Input should be less than or equal to "
                       "256 (got '512')")
    _fails_cleanly(["serve", "--snapshots", str(tmp_path / "s"), "--port", str(busy_port)],
                   f"cannot listen on 127.0.0.1:{busy_port} (Address already in use): pick "
                   "another port with --port or LIVEREC_PORT")
    _fails_cleanly(["serve", "--snapshots", str(tmp_path / "s"), "--item-features", str(tiny)],
                   "item features are read as movielens")


def test_train_refuses_bad_json_a_busy_port_and_an_unusable_location(
    tmp_path: Path, busy_port: int
) -> None:
    base = ["train", "--bootstrap", "127.0.0.1:1", "--snapshots", str(tmp_path / "s")]
    _fails_cleanly([*base, "--metrics-port", "-1", "--model-params", "{bad"], "not JSON")
    # The same mistakes in variables name the variable (pydantic named the field and
    # "EnvSettingsSource", or dumped its own error with a link)
    _fails_cleanly([*base, "--batch-size", "0"],
                   "error: --batch-size: Input should be greater than or equal to 1 (got 0)")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LIVEREC_MODEL_PARAMS", "{bad")
        _fails_cleanly(base, "error: LIVEREC_MODEL_PARAMS: cannot be read: Expecting "
                             "property name enclosed in double quotes")
        env.setenv("LIVEREC_MODEL_PARAMS", "{}")
        env.setenv("LIVEREC_BATCH_SIZE", "abc")
        _fails_cleanly(base, "error: LIVEREC_BATCH_SIZE: Input should be a valid integer")
    _fails_cleanly([*base, "--metrics-port", str(busy_port)], "cannot serve metrics")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _fails_cleanly(["train", "--bootstrap", "127.0.0.1:1", "--metrics-port", "-1",
                    "--snapshots", str(blocker / "s")], "error:")


def test_evaluate_and_features_refuse_unknown_names_and_files(tiny: Path) -> None:
    _fails_cleanly(["evaluate", str(tiny), "--models", "bogus"], "unknown model")
    _fails_cleanly(["evaluate", str(tiny), "--preset", "bogus"], "unknown preset")
    _fails_cleanly(["features", "publish", str(tiny), "--bootstrap", "127.0.0.1:1"],
                   "item features are read as")
    _fails_cleanly(["evaluate", str(tiny), "--user-col", "a", "--item-col", "b", "--time-col",
                    "a", "--item-features", str(tiny)], "--item-features: ")
    _fails_cleanly(["evaluate", str(tiny), "--user-col", "a", "--item-col", "b", "--time-col",
                    "a", "--item-features", str(tiny), "--features-preset", "bogus"],
                   "got preset 'bogus'")
    _fails_cleanly(["evaluate", str(tiny), "--sample", "0"], "must be in (0, 1], got 0.0")
    _fails_cleanly(["evaluate", str(tiny), "--event-types", "like=love"],
                   "liverec's event types are")
    huge = tiny.parent / "huge.csv"  # a field over the csv module's limit: no traceback
    huge.write_text('item_id,text\ni1,"' + "word " * 40_000 + '"\n')
    _fails_cleanly(["evaluate", str(tiny), "--user-col", "a", "--item-col", "b", "--time-col",
                    "a", "--item-features", str(huge)], "line 2: field larger than field limit")
    _fails_cleanly(["evaluate", str(huge), "--user-col", "item_id", "--item-col", "text",
                    "--time-col", "item_id"], "line 2: field larger than field limit")
    # checked before any topic is created (an unreachable cluster would take 30 s)
    _fails_cleanly(["replay", str(tiny), "--bootstrap", "127.0.0.1:1", "--event-types",
                    "like=love"], "liverec's event types are")


def test_keys_refuse_a_directory_for_a_file(tmp_path: Path) -> None:
    for args in (["list"], ["add", "x", "--scope", "write"], ["revoke", "x"]):
        _fails_cleanly(["keys", *args, "--file", str(tmp_path)], "Is a directory")


def test_serve_uses_the_local_broker_when_no_bootstrap_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As train and replay do (README, "Configuration"); without one it warns and serves.
    import types

    from serving import app as serving_app
    from stream import broker

    for var in ("LIVEREC_KAFKA_BOOTSTRAP", "LIVEREC_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    got: list[str] = []
    monkeypatch.setattr(serving_app, "run",
                        lambda settings, auth, limits: got.append(settings.bootstrap))
    # --port 0: the check must not depend on 8000 being free on the machine
    args = ["serve", "--snapshots", str(tmp_path / "s"), "--port", "0"]
    monkeypatch.setattr(broker, "broker_status",
                        lambda: types.SimpleNamespace(bootstrap="127.0.0.1:9999"))
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    monkeypatch.setattr(broker, "broker_status", lambda: None)
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    assert CliRunner().invoke(cli.app, [*args, "--bootstrap", "10.0.0.1:9092"]).exit_code == 0
    monkeypatch.setattr(broker, "broker_status",
                        lambda: types.SimpleNamespace(bootstrap="127.0.0.1:9999"))
    monkeypatch.setenv("LIVEREC_KAFKA_BOOTSTRAP", "")  # set empty: no Kafka at all
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="liverec.serve"):
        assert CliRunner().invoke(cli.app, args).exit_code == 0
    said = " ".join(r.getMessage() for r in caplog.records if r.name == "liverec.serve")
    # on purpose: said as such, not as a setting to fix
    assert "snapshots only (the Kafka bootstrap is set empty)" in said, said
    assert "no Kafka: set" not in said
    assert got == ["127.0.0.1:9999", "", "10.0.0.1:9092", ""]


_LEVELS = "debug, info, warning, error, critical"


def _one_line_usage_error(args: list[str], env: dict[str, str], *expect: str) -> str:
    """``args`` exit 2 with one line on the output holding every ``expect``."""
    result = CliRunner().invoke(cli.app, args, env={"LIVEREC_KAFKA_BOOTSTRAP": "", **env})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for text in expect:
        assert text in lines[0], result.output
    return lines[0]


def test_a_bad_log_level_or_format_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    serve = ["serve", "--snapshots", str(tmp_path / "s"), "--port", "0"]
    train = ["train", "--bootstrap", "127.0.0.1:1", "--metrics-port", "-1",
             "--snapshots", str(tmp_path / "t")]
    for args in (serve, train):
        line = _one_line_usage_error(args, {"LIVEREC_LOG_LEVEL": "verbose"},
                                     "LIVEREC_LOG_LEVEL", _LEVELS, "'verbose'")
        assert "--log-format" not in line and "LIVEREC_LOG_FORMAT" not in line, line
        _one_line_usage_error(args, {"LIVEREC_LOG_FORMAT": "xml"},
                              "LIVEREC_LOG_FORMAT", "text, json", "'xml'")
        line = _one_line_usage_error([*args, "--log-format", "yaml"], {},
                                     "--log-format", "text, json", "'yaml'")
        assert "LIVEREC_LOG_LEVEL" not in line, line
    line = _one_line_usage_error([*train, "--log-level", "loud"], {},
                                 "--log-level", _LEVELS, "'loud'")
    assert "--log-format" not in line, line


def test_log_levels_are_taken_in_any_case_and_warn_is_warning() -> None:
    from serving.settings import ServeSettings

    assert ServeSettings(log_level="WARN").log_level == "warning"
    assert ServeSettings(log_level="Debug").log_level == "debug"
    with pytest.raises(ValueError, match=_LEVELS):
        ServeSettings(log_level="trace")
