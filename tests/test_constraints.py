"""constraints.txt pins the environment: `make install` and the Dockerfile install with it.

The lock is complete (every package liverec and its tests pull in, directly or not, has
a pin), consistent with pyproject.toml's bounds, and is what this suite runs on: a pin
that differs from the installed version means the environment drifted from the lock
(`make install` restores it; `make lock` moves the pins on purpose).
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
#: what the virtualenv itself brings (``pip freeze`` leaves them out, as does the lock)
PACKAGING_TOOLS = frozenset({"pip", "setuptools", "wheel"})


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not a name==version pin"
        key = canonicalize_name(name)
        assert key not in out, f"constraints.txt pins {name} twice"
        out[key] = Version(version)
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(r) for r in lines]


def installed_closure(elsewhere: set[str] | None = None) -> set[str]:
    """The installed distributions liverec[test] requires, transitively (less
    :data:`PACKAGING_TOOLS`). ``elsewhere`` collects the packages a requirement wants
    on another platform only (``nvidia-*`` beside torch on Linux x86_64, say)."""
    seen: set[str] = set()
    todo = [Requirement(str(r)) for r in declared()]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            if elsewhere is not None and "extra" not in str(req.marker):
                elsewhere.add(key)
            continue
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(req.name)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                    sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                sub.marker = None
            elif "extra" in str(sub.marker):
                continue  # an extra nobody asked for
            todo.append(sub)  # a platform marker: checked (and collected) above
    return seen - PACKAGING_TOOLS


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    locked = pins()
    for req in declared():
        key = canonicalize_name(req.name)
        assert key in locked, f"{req.name} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(locked[key], prereleases=True), (
            f"constraints.txt pins {req.name}=={locked[key]}, outside pyproject's {req}")


def test_the_suite_runs_on_the_pinned_versions() -> None:
    locked = pins()
    closure = installed_closure()
    assert {"numpy", "torch", "pytest", "confluent-kafka"} <= closure  # the walk reached
    for key in sorted(closure):
        assert key in locked, f"{key} is installed for liverec but not pinned: make lock"
        have = Version(md.version(key))
        assert have == locked[key], (
            f"{key} {have} is installed, constraints.txt pins {locked[key]}: make install")


def test_nothing_pinned_that_nothing_needs() -> None:
    # A pin for another platform's dependency (the lock is made on Linux x86_64) is
    # needed there, not extra.
    elsewhere: set[str] = set()
    extra = set(pins()) - installed_closure(elsewhere) - elsewhere
    assert not extra, f"constraints.txt pins packages liverec[test] does not use: {extra}"


def test_the_image_installs_with_the_pins() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY constraints.txt" in dockerfile
    assert "-r requirements.txt -c constraints.txt" in dockerfile
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert "constraints.txt" not in ignored
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in makefile
