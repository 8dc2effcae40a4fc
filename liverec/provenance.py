"""What produced a result file: the code (git commit, uncommitted changes), the
libraries, and every model's hyperparameters as it ran, defaults included.

A result that records only the arguments a command was given cannot be told apart
from one produced after a model's defaults changed (two ``bench_deep`` reports of
session 42 and 43 held the same ``params`` and different ``seqnn`` figures).

>>> info = code_provenance()
>>> sorted(info)[:3], isinstance(info["git_dirty"], (bool, type(None)))
(['git_commit', 'git_dirty', 'liverec_version'], True)
>>> json_safe({"a": (1, 2.5), "b": Path("x"), "c": {"d": None}})
{'a': [1, 2.5], 'b': 'x', 'c': {'d': None}}
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from stream.buildinfo import liverec_version

__all__ = ["code_provenance", "json_safe", "model_hyperparameters"]

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
    """Each model's constructor arguments as it runs (``get_params``), JSON-safe."""
    return {name: json_safe(model.get_params()) for name, model in models.items()}


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists, paths as strings and anything else that JSON
    cannot hold as its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [json_safe(v) for v in items]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            pass
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
