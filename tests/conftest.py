"""Shared fixtures: one real Kafka cluster per test session, fresh topics per test.

The cluster comes from :func:`stream.broker.resolve_bootstrap`:
``LIVEREC_KAFKA_BOOTSTRAP``, else a Docker KRaft container, else the project's
local KRaft broker. If none can be had the Kafka tests *error* with the reason
(they are never skipped silently); the summary line counts them and names the source.
Tests of client behaviour take ``kafka_settings``, which runs them once per client
library.

When a Docker engine answers but has no Kafka image and cannot pull one (no registry
reachable), the fixture builds the local stand-in (``scripts/build-images.sh kafka``);
if that fails too it says so once and the session uses the local broker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _keep_process_settings() -> Iterator[None]:
    """A test that runs the CLI in process (typer's CliRunner) gets its process-wide
    settings: the umask (``liverec.runtime.configure_umask``) and the log format it
    exports for child processes (``liverec.logs.configure_logging``); the next test
    starts from the session's."""
    before = os.umask(0o022)
    os.umask(before)
    log_format = os.environ.get("LIVEREC_LOG_FORMAT")
    yield
    os.umask(before)
    if log_format is None:
        os.environ.pop("LIVEREC_LOG_FORMAT", None)
    else:
        os.environ["LIVEREC_LOG_FORMAT"] = log_format


@pytest.fixture(scope="session")
def kafka_bootstrap(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[str]:
    """Bootstrap address of a real Kafka cluster, shared by the whole session."""
    from stream.broker import resolve_bootstrap

    build_note = _docker_kafka_image_or_build()
    kafka = resolve_bootstrap(tmp_path_factory.mktemp("kafka"))
    _kafka_source.append(kafka.source)
    if kafka.note:
        _say_once(pytestconfig, "\n".join(filter(None, [kafka.note, build_note])))
    try:
        yield kafka.bootstrap
    finally:
        kafka.close()


@pytest.fixture(params=["confluent", "kafka-python"])
def kafka_settings(request: pytest.FixtureRequest, kafka_bootstrap: str) -> KafkaSettings:
    """:class:`~stream.settings.KafkaSettings` for the session's cluster, once per Kafka
    client backend: a test using it runs against librdkafka and kafka-python."""
    from stream.settings import KafkaSettings

    return KafkaSettings(bootstrap=kafka_bootstrap, client=request.param)


def _docker_kafka_image_or_build() -> str | None:
    """Make sure an answering Docker engine has a Kafka image; None or why it has none."""
    from stream.broker import KafkaSetupError, docker_available
    from stream.docker_kafka import docker_kafka_image

    if os.environ.get("LIVEREC_KAFKA_BOOTSTRAP", "").strip() or not docker_available():
        return None
    try:
        docker_kafka_image()
        return None
    except KafkaSetupError:
        pass
    script = REPO / "scripts" / "build-images.sh"
    try:
        out = subprocess.run(["bash", str(script), "kafka"], capture_output=True, text=True,
                             timeout=1200, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"building the local Kafka image failed: {exc}"
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        return f"building the local Kafka image failed (exit {out.returncode}):\n{tail}"
    return None


def _say_once(config: pytest.Config, message: str) -> None:
    # Past output capturing, so the reason shows once in the run's own output.
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(f"kafka_bootstrap: {message}")
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(f"kafka_bootstrap: {message}", yellow=True)


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory of uuid-named topics (with their ``.dlq``), deleted after the test.

    ``new_topic(partitions=4)`` returns the topic name.
    """
    from stream.kafka import create_topics, delete_topics

    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        create_topics(kafka_bootstrap, {name: partitions, f"{name}.dlq": 1})
        created.extend([name, f"{name}.dlq"])
        return name

    yield make
    try:
        delete_topics(kafka_bootstrap, created)
    except Exception as exc:  # cleanup must not mask the test's own result
        print(f"could not delete test topics {created}: {exc}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``; tests needing it skip (with the reason) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


_kafka_outcomes: Counter[str] = Counter()
_kafka_source: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "kafka" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _kafka_outcomes["error" if report.when == "setup" and report.failed
                        else report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _kafka_outcomes:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(_kafka_outcomes.items()))
        source = f", {_kafka_source[0]}" if _kafka_source else ""
        terminalreporter.write_line(f"Kafka tests (real broker{source}): {parts}")
