"""A child process in its own process group (:class:`ChildProcess`), as the demo
runs the trainer and the server (the system tests and benchmarks run theirs with it
too): output to a log file, SIGTERM then SIGKILL to the whole group on stop, and on
Linux SIGTERM when the parent dies outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["ChildProcess"]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("liverec.demo")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: a child gets SIGTERM if the demo is killed outright (no finally runs then).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class ChildProcess:
    """A child process in its own process group, its output in a log file.

    Parameters
    ----------
    name
        Short name for messages.
    argv
        The command line.
    log_path
        stdout and stderr go here.
    env
        Environment of the child (the parent's when ``None``).

    Examples
    --------
    >>> import sys, tempfile
    >>> p = ChildProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
    ...                  Path(tempfile.mkdtemp()) / "sleeper.log").start()
    >>> p.alive()
    True
    >>> p.stop(timeout_s=5)  # True had it needed a SIGKILL
    False
    >>> p.alive()
    False
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> bool:
        """SIGTERM to the whole process group, SIGKILL after ``timeout_s``; idempotent.
        True when it had to be killed."""
        proc = self.proc
        killed = False
        try:
            if proc is None:
                return False
            if proc.poll() is None:
                self._signal(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s: SIGKILL", self.name, timeout_s)
                    killed = True
                    self._signal(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
            # Grandchildren that outlived their parent go too (same process group).
            self._signal(proc.pid, signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return killed

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_for(what: str, ok: Callable[[], bool], child: ChildProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited while waiting for {what}; log "
                               f"{child.log_path}:\n{child.log_tail()}")
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; log "
                       f"{child.log_path}:\n{child.log_tail()}")
