"""Plugin models: installed packages add models through the ``liverec.models`` entry
points, and ``liverec models check`` tells a model that keeps the protocol from one
that does not.

A plugin is "installed" the way pip leaves it: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path`` (read by :mod:`importlib.metadata`), beside the
package itself -- the example plugin of ``examples/plugin-model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from online_models import registry
from online_models.base import UserHistory
from online_models.conformance import check_model
from online_models.datasets import Dataset, to_batches
from online_models.snapshot import SnapshotError, SnapshotStore
from online_models.synthetic import generate_events

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugin-model"

#: test plugins beside the example, each with one mistake a model's author makes
BROKEN = '''
from pathlib import Path
import numpy as np
from online_models.base import OnlineModel, grow_rows
from online_models.bpr import BPR
from online_models.popularity import Popularity
from liverec_transitions import Transitions

class Forgetful(Transitions):
    name = "forgetful"

    @classmethod
    def from_state(cls, state):
        m = super().from_state(state)
        m._next = {}
        return m

class Wide(Transitions):
    name = "wide"

    def score_all(self, user, history=()):
        return super().score_all(user, history).astype(np.float64)

class Leaky(Transitions):  # a freed user row keeps its last item
    name = "leaky"

    def forget_users(self, users):
        OnlineModel.forget_users(self, users)

class ByName(Transitions):  # keeps each user's last item by id, past forget_users
    name = "byname"

    def learn(self, batch):
        by_name = self.__dict__.setdefault("by_name", {})
        back = [u for u in dict.fromkeys(batch.users.tolist())
                if u not in self.users and u in by_name]
        if back:  # a returning id picks up where it was forgotten
            rows = self.users.add_many(back)
            self._last = grow_rows(self._last, self.users.capacity, fill=-1)
            self._last[rows] = [by_name[u] for u in back]
        super().learn(batch)
        for u in set(batch.users.tolist()):
            by_name[u] = int(self._last[self.users.get(u)])

class Stranger(Transitions):  # an unknown user (row -1) reads the last row's last item
    name = "stranger"

    def score_all(self, user, history=()):
        if not history:
            last = int(self._last[self.users.get(user)])
            history = [self.items.ids[last]] if last >= 0 else []
        return super().score_all(user, history)

class AvgUser(Transitions):  # an unknown user gets the mean of every user's scores
    name = "avguser"

    def score_all(self, user, history=()):
        if history or user in self.users:
            return super().score_all(user, history)
        known = [u for u in self.users.ids if u is not None]
        return np.mean([super(AvgUser, self).score_all(u) for u in known],
                       axis=0).astype(np.float32)

class LeakyBPR(BPR):  # a freed user row keeps its factors for the next new user
    name = "leakybpr"

    def forget_users(self, users):
        OnlineModel.forget_users(self, users)

class MaskedLoss(Forgetful):  # loses state on restore; its own recommend hides that
    name = "maskedloss"

    def recommend(self, user, k=10, history=(), exclude=()):
        return Popularity.recommend(self, user, k, history, exclude)

class NoSimilar(Transitions):  # similar() may answer nothing: allowed
    name = "nosimilar"

    def similar(self, item, k=10):
        return []

class WithPath(Transitions):  # a constructor argument JSON cannot hold as it is
    name = "withpath"

    def __init__(self, popularity_weight=0.01, catalogue=Path("/tmp/catalogue.csv")):
        super().__init__(popularity_weight)
        self.catalogue = catalogue

class Live(Transitions):  # its state shares the array it goes on learning in
    name = "live"

    def get_state(self):
        state = super().get_state()
        state.arrays["pop"] = self._pop
        return state

class Renamed(Transitions):  # keeps its argument under another name
    name = "renamed"

    def __init__(self, weight=0.01):
        super().__init__(popularity_weight=weight)

class Nameless(Transitions):
    name = OnlineModel.name

class NoRebase(Popularity):  # a new half-life applied to counts decayed under the old
    name = "norebase"

    def set_param(self, name, value):
        OnlineModel.set_param(self, name, value)

class NeedsArg(Transitions):  # a constructor argument without a default
    name = "needsarg"

    def __init__(self, weight):
        super().__init__(popularity_weight=weight)
        self.weight = weight

class NotAModel:
    name = "not-a-model"

class Misnamed(Transitions):
    name = "something-else"
'''


def _install(root: Path, dist: str, entry_points: dict[str, str]) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[liverec.models]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` with the example plugin installed in it."""
    root = tmp_path / "site"
    root.mkdir()
    # the example's package beside its dist-info (not the example's folder on sys.path:
    # a wheel built there leaves an egg-info that would install it for every test)
    shutil.copytree(EXAMPLE / "liverec_transitions", root / "liverec_transitions")
    _install(root, "liverec_transitions", {"transitions": "liverec_transitions:Transitions"})
    monkeypatch.syspath_prepend(str(root))
    registry.plugins.cache_clear()
    yield root
    registry.plugins.cache_clear()


@pytest.fixture
def broken(site: Path) -> Path:
    (site / "broken_models.py").write_text(BROKEN)
    _install(site, "broken_models", {
        "forgetful": "broken_models:Forgetful",
        "wide": "broken_models:Wide",
        "leaky": "broken_models:Leaky",
        "byname": "broken_models:ByName",
        "stranger": "broken_models:Stranger",
        "live": "broken_models:Live",
        "renamed": "broken_models:Renamed",
        "nameless": "broken_models:Nameless",
        "norebase": "broken_models:NoRebase",
        "needsarg": "broken_models:NeedsArg",
        "avguser": "broken_models:AvgUser",
        "leakybpr": "broken_models:LeakyBPR",
        "maskedloss": "broken_models:MaskedLoss",
        "nosimilar": "broken_models:NoSimilar",
        "withpath": "broken_models:WithPath",
        "not-a-model": "broken_models:NotAModel",
        "misnamed": "broken_models:Misnamed",
        "missing": "no_such_module:Model",
    })
    registry.plugins.cache_clear()
    return site


def test_a_plugin_model_trains_snapshots_and_blends(site: Path, tmp_path: Path) -> None:
    assert registry.known_models()[-1] == "transitions"
    assert registry.plugins()["transitions"].source == "liverec_transitions 0.1"
    models = registry.create_models(
        ["popularity", "transitions", "hybrid"],
        {"hybrid": {"components": ["popularity", "transitions"]}})
    assert sorted(models["hybrid"].shared_components()) == ["popularity", "transitions"]
    stream = Dataset.from_records(generate_events(2_000, 60, 150, seed=3), name="s")
    history = UserHistory()
    for b in to_batches(stream, 256):
        history.extend(b.users, b.items)
        for name in models:
            models[name].learn(b)
    store = SnapshotStore(tmp_path / "snapshots")
    store.write(models, history=history, offsets={"clicks": {0: 2_000}},
                events_total=2_000, watermark=None)
    back = store.load().models
    user, hist = stream.users[-1], history.get(stream.users[-1])
    for name in ("transitions", "hybrid"):
        assert type(back[name]) is type(models[name])
        assert back[name].recommend(user, 10, hist, hist) == \
            models[name].recommend(user, 10, hist, hist)
    # the restored hybrid blends the restored plugin model, not a private copy
    assert back["hybrid"].shared_components()["transitions"] is back["transitions"]
    # the manifest records which release of the plugin wrote its state
    entries = store.read_manifest()["models"]
    assert entries["transitions"]["package"] == "liverec_transitions 0.1"
    assert "package" not in entries["popularity"]


def _transitions_snapshot(tmp_path: Path) -> SnapshotStore:
    """A snapshot store holding one version: the plugin model after 300 events."""
    model = registry.create("transitions")
    model.learn(next(iter(to_batches(Dataset.from_records(
        generate_events(300, 20, 40, seed=1), name="s"), 256))))
    store = SnapshotStore(tmp_path / "snapshots")
    store.write({"transitions": model}, history=UserHistory(), offsets={},
                events_total=300, watermark=None)
    return store


def test_loading_state_written_by_another_release_of_a_plugin_warns(
        site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _transitions_snapshot(tmp_path)
    info = site / "liverec_transitions-0.1.dist-info"
    (info / "METADATA").write_text((info / "METADATA").read_text().replace("0.1", "0.2"))
    registry.plugins.cache_clear()
    with caplog.at_level(logging.WARNING, logger="online_models.snapshot"):
        store.load()
    assert "model 'transitions' was written by plugin liverec_transitions 0.1, this " \
           "process has liverec_transitions 0.2" in caplog.text


def test_a_snapshot_naming_a_plugin_that_is_not_installed_says_so(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _transitions_snapshot(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])
    registry.plugins.cache_clear()
    with pytest.raises(SnapshotError, match=r"unknown model 'transitions'.*plugin model "
                                            r"needs its package installed here"):
        store.load()


def test_the_example_plugin_passes_every_check(site: Path) -> None:
    report = check_model("transitions")
    assert [c.name for c in report.checks if not c.ok] == []
    assert len(report.checks) == 14  # no scale-out check: it shares no item state
    assert report.hr is not None and report.hr_popularity is not None
    assert report.hr > report.hr_popularity  # transitions carry the planted successors
    assert report.capabilities["learn_local"] is False


def test_the_checks_catch_a_model_that_breaks_the_protocol(broken: Path) -> None:
    forgetful = check_model("forgetful")
    failed = {c.name: c.detail for c in forgetful.checks if not c.ok}
    assert set(failed) == {"restore", "keeps learning"}
    assert failed["restore"].startswith("after the round trip: probe user 0 gets")
    wide = check_model("wide")
    failed = {c.name: c.detail for c in wide.checks if not c.ok}
    assert "float64" in failed["score_all"] and "not a float32 array" in failed["score_all"]
    assert not wide.ok


@pytest.mark.parametrize(("name", "check", "reason"), [
    ("leaky", "forget users", "the row kept some of its former user's state"),
    ("leakybpr", "forget users", "the row kept some of its former user's state"),
    ("byname", "forgotten id returns", "kept something of the forgotten user by its id"),
    ("stranger", "strangers", "an unknown user scores exactly as"),
    ("maskedloss", "restore", "probe user 0 gets"),
    ("live", "state", "get_state returned arrays the model goes on writing to: 'pop'"),
    ("renamed", "builds", "'Renamed' object has no attribute 'weight': a model keeps every "
                          "constructor argument in an attribute of the same name"),
    ("norebase", "drift adaptation", "shortening half_life_seconds mid-stream, against a "
                                     "model restored there"),
])
def test_each_mistake_fails_its_own_check(broken: Path, name: str, check: str,
                                          reason: str) -> None:
    report = check_model(name)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert check in failed and reason in failed[check], failed
    if check != "builds":
        assert len(failed) <= 2, failed  # the mistake, not a cascade of failures


@pytest.mark.parametrize("name", ["avguser", "nosimilar", "withpath"])
def test_what_the_protocol_allows_passes(broken: Path, name: str) -> None:
    report = check_model(name)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]


def test_a_labelled_instance_passes_as_its_model_does() -> None:
    report = check_model("itemknn@short", {"window": 5}, events=1_500)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]


@pytest.mark.parametrize(("name", "reason"), [
    ("not-a-model", "is not a subclass of online_models.base.OnlineModel"),
    ("misnamed", "sets name = 'something-else': it must be 'misnamed'"),
    ("nameless", "does not set its name (it inherits 'base'): add `name: ClassVar[str] = "
                 "'nameless'`"),
    ("missing", "cannot be loaded: ModuleNotFoundError: No module named 'no_such_module'"),
])
def test_a_plugin_that_cannot_be_a_model_is_refused_with_its_reason(
        broken: Path, name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"plugin model '{name}' .*from broken_models 0.1") \
            as err:
        registry.create(name)
    assert reason in str(err.value)


def test_names_a_plugin_cannot_take_are_left_out_with_a_warning(
        site: Path, caplog: pytest.LogCaptureFixture) -> None:
    _install(site, "clash", {"itemknn": "liverec_transitions:Transitions",
                             "Bad Name": "liverec_transitions:Transitions",
                             "transitions": "liverec_transitions:Other"})
    registry.plugins.cache_clear()
    with caplog.at_level(logging.WARNING, logger="online_models.registry"):
        found = registry.plugins()
    assert found == {}  # 'transitions' is declared by two packages now
    text = caplog.text
    assert "'itemknn' (liverec_transitions:Transitions from clash 0.1) left out: a built-in" \
        in text
    assert "'Bad Name'" in text and "lower-case letters" in text
    assert "'transitions' left out: 2 packages declare it" in text
    assert registry.model_class("itemknn").__module__ == "online_models.itemknn"


def _cli(args: list[str], site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200",  # one line per message in rich's error box
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "liverec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_models_list_and_check_on_the_command_line(broken: Path) -> None:
    listed = _cli(["models", "list"], broken)
    assert listed.returncode == 1  # the broken plugins are listed, and why they fail
    row = next(line for line in listed.stdout.splitlines() if " transitions " in line)
    assert "liverec_transitions 0.1" in row and "liverec_transitions:Transitions" in row
    assert any(line.startswith("* itemknn ") for line in listed.stdout.splitlines())
    row = next(line for line in listed.stdout.splitlines() if " missing " in line)
    assert row.endswith("no_such_module:Model  (cannot be used: see below)")
    assert "error: plugin model 'missing' (no_such_module:Model from broken_models 0.1) " \
           "cannot be loaded: ModuleNotFoundError" in listed.stderr

    ok = _cli(["models", "check", "transitions", "--params", '{"popularity_weight": 0.1}'],
              broken)
    assert ok.returncode == 0, ok.stderr
    assert "transitions: all 14 checks passed" in ok.stdout
    assert "PASS  restore" in ok.stdout

    bad = _cli(["models", "check", "forgetful"], broken)
    assert bad.returncode == 1
    assert "FAIL  restore" in bad.stdout
    assert "forgetful: 2 of 14 checks failed (restore, keeps learning)" in bad.stderr

    unknown = _cli(["models", "check", "nope"], broken)
    assert unknown.returncode == 2 and "unknown model 'nope'" in unknown.stderr

    # evaluate: a constructor's refusal names what was given, not an absent option
    csv = broken / "clicks.csv"
    csv.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i1,2\n")
    needs = _cli(["evaluate", str(csv), "--models", "popularity,needsarg"], broken)
    assert needs.returncode == 2
    assert "--models (no --model-params given)" in needs.stderr
    assert "missing 1 required positional argument: 'weight'" in needs.stderr
    ok = _cli(["evaluate", str(csv), "--models", "popularity,needsarg", "--model-params",
               '{"needsarg": {"weight": 0.5}}'], broken)
    assert ok.returncode == 0, ok.stderr


QUICK = ("popularity", "itemknn", "sequence", "sknn")


@pytest.mark.parametrize("name", [
    n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in registry.MODEL_PATHS])
def test_every_built_in_model_passes_the_checks(name: str) -> None:
    report = check_model(name, events=1_500)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    assert report.hr is not None and np.isfinite(report.hr)
