"""What produced a result file: the code (git commit, uncommitted changes), the
libraries, and every model's hyperparameters as it ran, defaults included.

A result that records only the arguments a command was given cannot be told apart
from one produced after a model's defaults changed (two ``bench_deep`` reports of
session 42 and 43 held the same ``params`` and different ``seqnn`` figures).

>>> info = code_provenance()
>>> sorted(info)[:3], isinstance(info["git_dirty"], (bool, type(None)))
(['git_commit', 'git_dirty', 'liverec_version'], True)
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson

from online_models.snapshot_capture import _json_default
from stream.buildinfo import liverec_version

__all__ = ["code_provenance", "model_hyperparameters"]

#: libraries whose version moves the figures
LIBRARIES = ("numpy", "torch", "river", "scipy")


def code_provenance() -> dict[str, Any]:
    """The liverec version, the checkout's git commit and whether it had uncommitted
    changes to tracked files (both None outside a git checkout), Python and
    :data:`LIBRARIES`' versions (None where not installed)."""
    commit, dirty = _git_state(Path(__file__).resolve().parent.parent)
    info: dict[str, Any] = {"liverec_version": liverec_version(), "git_commit": commit,
                            "git_dirty": dirty, "python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            info[lib] = version(lib)
        except PackageNotFoundError:
            info[lib] = None
    return info


def model_hyperparameters(models: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each model's constructor arguments as it runs (``get_params``), in JSON as a
    snapshot's manifest holds them (a value JSON cannot hold: its ``repr``)."""
    return {name: orjson.loads(orjson.dumps(model.get_params(), default=_json_or_repr))
            for name, model in models.items()}


def _json_or_repr(value: Any) -> Any:
    try:
        return _json_default(value)
    except TypeError:
        return repr(value)


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout at ``root``; (None, None) where there is none
    or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None, None  # installed into a virtualenv inside another checkout
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status)
