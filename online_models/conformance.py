"""Does a model keep the one model protocol? What ``liverec models check NAME`` runs.

Written for the author of a model of their own (a plugin, see
:mod:`online_models.registry`) before the trainer, the evaluator, the snapshot store
and the server rely on it. Every check runs fresh models of ``NAME`` on one small
seeded synthetic stream with planted structure (:func:`~online_models.synthetic.
generate_events`; a model that takes item content gets planted content too) and says
pass or fail with a one-line reason; a check that raises
fails with the exception's type and message. They ask what liverec's parts assume:

* ``builds``: the name builds an :class:`~online_models.base.OnlineModel` whose
  ``name`` is its registry name;
* ``learns``: it learns the stream in mini-batches and counts users and items;
* ``score_all``: one float32 score per item row (``items.capacity``), no NaN, for a
  known user and for one never seen;
* ``score_many``: row ``r`` equals ``score_all`` of query ``r`` (the evaluator
  scores in batches);
* ``recommend``: ``k`` distinct known items, none excluded, best first;
* ``similar``: items like an item, never itself, best first; an unknown item is an
  empty or short list, not an error;
* ``new ids``: a batch of new users and items grows the index and the scores;
* ``strangers``: an unknown user's scores depend on no known user's state (a model
  that reads ``rows[-1]`` for an unknown user, whose row is -1, reads the last user's);
* ``state``: :meth:`~online_models.base.OnlineModel.get_state` is numeric arrays
  and JSON meta naming the model, none of them an array the model goes on writing
  to (the trainer rebuilds copies of models straight from ``get_state``);
* ``restore``: the state written as safetensors and JSON and read back rebuilds a
  model that recommends the same;
* ``keeps learning``: a rebuilt model learns on like the original;
* ``deterministic``: two fresh models on the same stream recommend the same;
* ``forget users``: a forgotten user leaves the user index and still gets
  recommendations (as a new user), and the next new user, who may get the freed row,
  inherits nothing of theirs; nor does the forgotten id when it comes back (state kept
  by user id, say a last item, outlived ``forget_users`` and taught a transition from
  the forgotten past);
* ``drift adaptation`` (only for a model that declares ``adaptable`` hyperparameters):
  shortening each with ``set_param`` (half of it; a half-life to an eighth of the
  stream's span at most) and learning on gives what a model restored from a snapshot
  taken at that moment, then changed alike, gives (what a trainer restarted in the
  middle of an adaptation does); a forward-decayed model that does not rebase its
  counts in ``set_param`` fails it;
* ``scale-out deltas`` (only for a model with every
  :class:`~online_models.deltas.SharesItemState` method): ``apply_delta(learn_local(b))``
  learns what ``learn(b)`` does.

It also reports, without failing, the model's prequential HR@k on that stream next
to popularity's (a model below popularity on planted structure is worth a look),
and which optional parts of the protocol it has.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from online_models import registry
from online_models.base import Batch, ModelState, OnlineModel, UserHistory
from online_models.datasets import Dataset, to_batches
from online_models.deltas import learns_from_item_state, missing_share_methods
from online_models.snapshot import SnapshotStore
from online_models.snapshot_capture import _json_default
from online_models.synthetic import generate_events, planted_item_texts

__all__ = ["Check", "Report", "check_model"]


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``detail`` says what failed, or what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """Every check of one model, its HR@k beside popularity's and its optional parts."""

    model: str
    checks: list[Check] = field(default_factory=list)
    #: optional part of the protocol -> whether the model has it
    capabilities: dict[str, bool] = field(default_factory=dict)
    #: what an optional part it lacks misses, where that is more than the part's name
    lacks: dict[str, str] = field(default_factory=dict)
    #: prequential HR@k on the check stream: this model's and popularity's
    hr: float | None = None
    hr_popularity: float | None = None
    #: why the HR@k figures are missing, when they are
    hr_error: str | None = None
    k: int = 10

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


class _Failed(AssertionError):
    """A check's expectation that did not hold (its message is the reason)."""


def _expect(cond: bool, reason: str) -> None:
    if not cond:
        raise _Failed(reason)


#: optional methods -> what having them gives
CAPABILITIES: dict[str, str] = {
    "score_many": "its own batched scoring (score_many; else the protocol's, a loop over "
                  "score_all: correct, slower)",
    "learn_local": "scale-out trainers (online_models.deltas.SharesItemState)",
    "set_item_features": "item content (set_item_features)",
    "adaptable": "drift adaptation (adaptable hyperparameters)",
    "item_vectors": "item vectors for the diversity figure (item_vectors)",
}


def _capabilities(cls: type[OnlineModel]) -> dict[str, bool]:
    return {
        "score_many": cls.score_many is not OnlineModel.score_many,
        "learn_local": not missing_share_methods(cls),
        "set_item_features": callable(getattr(cls, "set_item_features", None)),
        "adaptable": bool(cls.adaptable),
        "item_vectors": cls.item_vectors is not OnlineModel.item_vectors,
    }


class _Context:
    """The check stream, its probes and a fresh-model factory."""

    def __init__(self, build: Callable[[], OnlineModel], stream: Dataset, k: int) -> None:
        self.build = build
        self.stream = stream
        self.k = k
        self.batches = list(to_batches(stream, 256))
        counts = Counter(stream.users)
        ranked = sorted(counts, key=lambda u: (-counts[u], u))
        # a heavy user, a light one, the latest one
        self.probes = [ranked[0], ranked[len(ranked) // 2], stream.users[-1]]
        self.top_item = Counter(stream.items).most_common(1)[0][0]
        # every user's distinct items, oldest first (a repeat moves to the end), in one
        # pass: the checks ask for the probes' histories many times
        self._histories: dict[str, dict[str, None]] = {}
        for u, i in zip(stream.users, stream.items, strict=True):
            hist = self._histories.setdefault(u, {})
            hist.pop(i, None)
            hist[i] = None

    def history(self, user: str, n: int | None = 20) -> list[str]:
        """``user``'s last ``n`` distinct items (all with None), oldest first."""
        hist = list(self._histories.get(user, {}))
        return hist if n is None else hist[-n:]

    def fitted(self, batches: list[Batch] | None = None) -> OnlineModel:
        model = self.build()
        for b in self.batches if batches is None else batches:
            model.learn(b)
        return model

    def recs(self, model: OnlineModel) -> list[list[tuple[str, float]]]:
        """The probes' top k through :meth:`OnlineModel.recommend` itself (its ``score_all``
        ranked, as the server ranks it): a model's own ``recommend`` is never served."""
        return [OnlineModel.recommend(model, u, self.k, history=h, exclude=h)
                for u in self.probes for h in [self.history(u)]]


def _same_recs(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]],
               what: str) -> None:
    for user, ra, rb in zip(range(len(a)), a, b, strict=True):
        ia, ib = [i for i, _ in ra], [i for i, _ in rb]
        _expect(ia == ib, f"{what}: probe user {user} gets {ib[:3]}... instead of {ia[:3]}...")
        close = np.allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-5, atol=1e-6)
        _expect(close, f"{what}: probe user {user}'s scores differ beyond 1e-5")


def _check_scores(model: OnlineModel, scores: np.ndarray, who: str) -> None:
    _expect(isinstance(scores, np.ndarray) and scores.dtype == np.float32,
            f"{who}: score_all returned {type(scores).__name__} "
            f"{getattr(scores, 'dtype', '')}, not a float32 array")
    _expect(scores.shape == (model.items.capacity,),
            f"{who}: shape {scores.shape}, not (items.capacity,) = ({model.items.capacity},)")
    _expect(not np.isnan(scores).any(), f"{who}: NaN among the scores")
    _expect(not np.isposinf(scores).any(),
            f"{who}: +inf among the scores (ranking drops non-finite rows: those items "
            "would never be recommended)")


def _learns(c: _Context, m: OnlineModel) -> str:
    _expect(m.n_users > 0 and m.n_items > 0,
            f"n_users {m.n_users}, n_items {m.n_items} after {len(c.stream)} events")
    _expect(m.items.capacity >= m.n_items, "items.capacity below n_items")
    return f"{m.n_users} users, {m.n_items} items from {len(c.stream):,} events"


def _score_all(c: _Context, m: OnlineModel) -> str:
    for u in c.probes:
        _check_scores(m, m.score_all(u, c.history(u)), f"user {u!r}")
    _check_scores(m, m.score_all("never-seen-user"), "an unknown user")
    return f"{len(c.probes)} known users and an unknown one"


def _score_many(c: _Context, m: OnlineModel) -> str:
    users = [*c.probes, "never-seen-user"]
    hists = [c.history(u) for u in c.probes] + [[]]
    many = np.asarray(m.score_many(users, hists))
    _expect(many.shape == (len(users), m.items.capacity),
            f"shape {many.shape}, not ({len(users)}, {m.items.capacity})")
    for r, (u, h) in enumerate(zip(users, hists, strict=True)):
        one = m.score_all(u, h)
        _expect(np.array_equal(np.isinf(one), np.isinf(many[r])),
                f"row {r}: -inf rows differ from score_all's")
        fin = np.isfinite(one)
        _expect(np.allclose(one[fin], many[r][fin], rtol=1e-4, atol=1e-5),
                f"row {r} differs from score_all({u!r}) beyond 1e-4")
    return f"{len(users)} queries equal score_all"


def _recommend(c: _Context, m: OnlineModel) -> str:
    known = set(c.stream.items)
    for u in c.probes:
        hist = c.history(u)
        exclude = set(hist) | {c.stream.items[0], c.stream.items[-1]}
        recs = OnlineModel.recommend(m, u, c.k, history=hist, exclude=exclude)
        items, scores = [i for i, _ in recs], [s for _, s in recs]
        _expect(len(items) == c.k, f"user {u!r}: {len(items)} items, not {c.k}")
        _expect(len(set(items)) == c.k, f"user {u!r}: an item twice")
        _expect(not exclude & set(items), f"user {u!r}: an excluded item recommended")
        _expect(set(items) <= known, f"user {u!r}: an item never seen in the stream")
        _expect(bool(np.all(np.isfinite(scores))), f"user {u!r}: a score not finite")
        _expect(scores == sorted(scores, reverse=True), f"user {u!r}: not best first")
    return f"top {c.k} for {len(c.probes)} users"


def _similar(c: _Context, m: OnlineModel) -> str:
    sims = m.similar(c.top_item, c.k)
    items, scores = [i for i, _ in sims], [s for _, s in sims]
    _expect(len(items) <= c.k, f"{len(items)} items like the most clicked item, k={c.k}")
    _expect(c.top_item not in items, "the item itself is among its similar items")
    _expect(len(set(items)) == len(items), "an item twice")
    _expect(scores == sorted(scores, reverse=True), "not best first")
    _expect(isinstance(m.similar("never-seen-item", c.k), list),
            "similar() of an unknown item is not a list")
    if not items:  # allowed ("up to k"): the server's similar-items answer is empty
        return f"no items like the most clicked item {c.top_item!r} (allowed; say so in docs)"
    return f"{len(items)} items like {c.top_item!r}"


def _new_ids(c: _Context, m: OnlineModel) -> str:
    n_items = m.n_items
    m.learn(Batch.from_columns(["new-u1", "new-u2", "new-u1"], ["new-i1", "new-i2", "new-i2"],
                               [1.0, 5.0, 2.0], [2e9, 2e9 + 1, 2e9 + 2]))
    _expect(m.n_items == n_items + 2, f"n_items {n_items} -> {m.n_items}, not +2")
    _expect(m.items.get("new-i1") >= 0, "a new item is not in the item index")
    _check_scores(m, m.score_all("new-u1", ["new-i1"]), "a new user")
    return "2 new users, 2 new items"


def _state(c: _Context, m: OnlineModel, name: str) -> str:
    state = m.get_state()
    _expect(isinstance(state, ModelState), f"get_state returned {type(state).__name__}")
    state.check()
    kind = name.partition("@")[0]
    _expect(state.meta.get("class") == kind,
            f"meta['class'] is {state.meta.get('class')!r}, not {kind!r}")
    _expect("params" in state.meta, "meta has no 'params' (the constructor arguments)")
    orjson.dumps(state.meta, default=_json_default)  # what the snapshot writer does
    size = sum(a.nbytes for a in state.arrays.values())
    kept = {k: np.array(v, copy=True) for k, v in state.arrays.items()}
    m.learn(c.batches[-1])
    live = sorted(k for k, v in state.arrays.items()
                  if v.shape != kept[k].shape or not np.array_equal(v, kept[k], equal_nan=True))
    _expect(not live, f"get_state returned arrays the model goes on writing to: "
                      f"{', '.join(map(repr, live))} (return copies)")
    return f"{len(state.arrays)} arrays, {size:,} bytes"


def _restore(c: _Context, m: OnlineModel, name: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:  # the real writer and reader
        store = SnapshotStore(Path(tmp))
        store.write({name: m}, history=UserHistory(), offsets={}, events_total=0,
                    watermark=None)
        rebuilt = store.load().models[name]
    _expect(type(rebuilt) is type(m), f"from_state built {type(rebuilt).__name__}")
    _expect((rebuilt.n_users, rebuilt.n_items) == (m.n_users, m.n_items),
            "a different number of users or items after the round trip")
    _same_recs(c.recs(m), c.recs(rebuilt), "after the round trip")
    return "same recommendations after a snapshot written and read back"


def _keeps_learning(c: _Context) -> str:
    half = len(c.batches) // 2
    original = c.fitted(c.batches[:half])
    rebuilt = registry.from_state(original.get_state())
    for b in c.batches[half:]:
        original.learn(b)
        rebuilt.learn(b)
    _same_recs(c.recs(original), c.recs(rebuilt), "rebuilt at half the stream")
    return f"rebuilt after {half} of {len(c.batches)} batches, same after the rest"


def _deterministic(c: _Context) -> str:
    _same_recs(c.recs(c.fitted()), c.recs(c.fitted()), "a second fresh model")
    return "two fresh models agree"


def _forget(c: _Context, m: OnlineModel) -> str:
    x, y = c.probes[0], c.probes[1]
    before = m.n_users
    m.forget_users([x])
    _expect(m.n_users == before - 1, f"n_users {before} -> {m.n_users}, not -1")
    _expect(x not in m.users, "the forgotten user is still in the user index")
    _expect(len(OnlineModel.recommend(m, x, c.k)) > 0,
            "no recommendations for the forgotten user")
    # Two copies forget a different user each (x here, y there), then a new user z
    # clicks an item neither had: z takes the freed row (IdIndex reuses freed rows) in
    # both, after the same random draws, against the same item-side state. z must
    # score alike in both, alone and with x's or y's last item as context: a row that
    # kept its former user's state shows in z's scores or in what z's click taught.
    twin = c.fitted()
    twin.forget_users([y])
    seen = set(c.history(x, None)) | set(c.history(y, None))
    item = next((i for i in reversed(c.stream.items) if i not in seen), None)
    if item is None:
        return f"{x!r} forgotten; no item left to check its row with"
    t = float(c.stream.timestamps[-1]) + 1.0
    for model in (m, twin):
        model.learn(Batch.from_columns(["new-z"], [item], [1.0], [t]))
    rows = (m.users.get("new-z"), twin.users.get("new-z"))
    for h in ((), c.history(x)[-1:], c.history(y)[-1:]):
        a, b = m.score_all("new-z", h), twin.score_all("new-z", h)
        _expect(bool(np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)),
                f"a new user in the freed row of {x!r} scores unlike one in the freed row "
                f"of {y!r}: the row kept some of its former user's state (forget_users "
                "must reset what a model keeps per user row: IdIndex reuses freed rows)")
    return f"{x!r} forgotten; a new user in its row (row {rows[0]}) inherits nothing"


def _returns(c: _Context) -> str:
    """The forgotten id comes back: it must learn and score as a new user would."""
    x, y = c.probes[0], c.probes[1]
    back, fresh = c.fitted(), c.fitted()
    back.forget_users([x])
    fresh.forget_users([x])
    seen = set(c.history(x, None))
    item = next((i for i in reversed(c.stream.items) if i not in seen), None)
    if item is None:
        return f"no item {x!r} never had, to check its return with"
    t = float(c.stream.timestamps[-1]) + 1.0
    back.learn(Batch.from_columns([x], [item], [1.0], [t]))
    fresh.learn(Batch.from_columns(["new-z"], [item], [1.0], [t]))
    for h in ((), c.history(x)[-1:], [item]):
        for who_back, who_fresh in ((x, "new-z"), (y, y)):
            a, b = back.score_all(who_back, h), fresh.score_all(who_fresh, h)
            _expect(bool(np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)),
                    f"{x!r}, forgotten and back with one click, scores ({who_back!r}, "
                    f"context {list(h)}) unlike a new user with the same click: the "
                    "model kept something of the forgotten user by its id (forget_users "
                    "must drop every per-user state, not only the user's row)")
    return f"{x!r} forgotten and back: learns and scores as a new user"


def _strangers(c: _Context) -> str:
    # New users until the user rows fill a power of two: an array of one row per user
    # that grew by doubling is then exactly full, and arr[-1] (what an unchecked -1 of
    # IdIndex.get reads) is the last user's own row.
    m = c.fitted()
    t = float(c.stream.timestamps[-1]) + 1.0
    rows = m.users.capacity
    fill = (1 << max(rows - 1, 1).bit_length()) - rows
    items = c.stream.items
    if fill:
        m.learn(Batch.from_columns([f"filler-{k}" for k in range(fill)],
                                   [items[k % len(items)] for k in range(fill)],
                                   [1.0] * fill, [t] * fill))
    last = m.users.ids[-1]
    other = next(u for u in reversed(m.users.ids) if u is not None and u != last)
    assert last is not None
    mine, theirs = m.score_all(last), m.score_all(other)
    stranger = m.score_all("never-seen-user")
    personal = not np.allclose(mine, theirs, rtol=1e-4, atol=1e-5, equal_nan=True)
    _expect(not (personal and np.allclose(stranger, mine, rtol=1e-4, atol=1e-5,
                                          equal_nan=True)),
            f"an unknown user scores exactly as {last!r}, the last user row: it reads that "
            "user's state (IdIndex.get and rows give -1 for an unknown id, and -1 indexes "
            "the last row of an array)")
    return f"an unknown user does not score as {last!r}, the last of {m.users.capacity} rows"


def _adapts(c: _Context) -> str:
    half = len(c.batches) // 2
    live = c.fitted(c.batches[:half])
    restored = registry.from_state(live.get_state())
    changed = []
    # A half-life short against the stream's span, so that counts decayed under the
    # old one and not rebased show (half of a year-long default would not, here).
    span = float(np.ptp(np.asarray(c.stream.timestamps, np.float64))) or 1.0
    for pname, kind in live.adaptable_params().items():
        value = 0.5 * float(getattr(live, pname))
        if kind == "half_life":
            value = min(value, span / 8)
        live.set_param(pname, value)
        restored.set_param(pname, value)
        _expect(getattr(live, pname) == value,
                f"set_param({pname!r}, {value}) left {pname} at {getattr(live, pname)!r}")
        changed.append(pname)
    if not changed:
        return "no adaptable hyperparameter has a positive value to shorten here"
    for b in c.batches[half:]:
        live.learn(b)
        restored.learn(b)
    _same_recs(c.recs(live), c.recs(restored),
               f"shortening {', '.join(changed)} mid-stream, against a model restored there")
    return f"{', '.join(changed)} shortened mid-stream: as a restored model"


def _scale_out(c: _Context) -> str:
    whole, split = c.build(), c.build()
    for b in c.batches:
        whole.learn(b)
        split.apply_delta(split.learn_local(b))  # type: ignore[attr-defined]
    _expect((split.n_users, split.n_items) == (whole.n_users, whole.n_items),
            "apply_delta(learn_local(b)) counts other users or items than learn(b)")
    if learns_from_item_state(whole):  # merged inexactly by design (BPR's steps)
        return ("deltas apply; recommendations not compared: its learning reads item "
                "state (learns_from_item_state), so its merge is approximate")
    _same_recs(c.recs(whole), c.recs(split), "apply_delta(learn_local(b)) against learn(b)")
    return "apply_delta(learn_local(b)) recommends as learn(b) does"


def _with_content(model: OnlineModel, n_items: int) -> OnlineModel:
    """``model``, given the stream's planted item content when it takes content."""
    setter = getattr(model, "set_item_features", None)
    if callable(setter):
        from online_models.content import ItemFeatures

        setter(ItemFeatures.from_texts(planted_item_texts(n_items)))
    return model


def _hit_rates(name: str, c: _Context
               ) -> tuple[float | None, float | None]:
    from online_models.evaluation import PrequentialEvaluator

    models = {"popularity": registry.create("popularity")}
    if name != "popularity":
        models[name] = c.build()
    ev = PrequentialEvaluator(registry.bind(models), k=c.k)
    ev.run(c.batches)
    return ev.totals(name)["hr"], ev.totals("popularity")["hr"]


def check_model(name: str, params: Mapping[str, Any] | None = None, *, events: int = 3_000,
                users: int = 80, items: int = 200, seed: int = 7, k: int = 10) -> Report:
    """Run every check on the model called ``name`` (built with ``params``).

    The stream is ``events`` synthetic events of ``users`` users over ``items`` items
    (``seed``). Checks after a failed ``builds`` or ``learns`` are not run.
    """
    params = dict(params or {})
    report = Report(name, k=k)

    def run(check: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
        except _Failed as exc:
            report.checks.append(Check(check, False, str(exc)))
            return False
        except Exception as exc:  # the model's own error: the check fails with it
            report.checks.append(Check(check, False, f"{type(exc).__name__}: {exc}"))
            return False
        report.checks.append(Check(check, True, detail))
        return True

    def builds() -> str:
        model = registry.create(name, **params)
        _expect(isinstance(model, OnlineModel), f"{type(model).__name__} is not an OnlineModel")
        try:
            model.get_params()
        except AttributeError as exc:
            raise _Failed(f"get_params: {exc}: a model keeps every constructor argument in "
                          "an attribute of the same name (self.x = x), which get_params "
                          "and snapshots read back") from None
        report.capabilities = _capabilities(type(model))
        if not report.capabilities["learn_local"]:
            report.lacks["learn_local"] = "missing " + ", ".join(missing_share_methods(model))
        return type(model).__module__ + "." + type(model).__qualname__

    if not run("builds", builds):
        return report
    stream = Dataset.from_records(generate_events(events, users, items, seed=seed),
                                  name="check")
    c = _Context(lambda: _with_content(registry.create(name, **params), items), stream, k)
    fitted: dict[str, OnlineModel] = {}

    def learns() -> str:
        fitted["model"] = c.fitted()
        return _learns(c, fitted["model"])

    if not run("learns", learns):
        return report
    m = fitted["model"]
    run("score_all", lambda: _score_all(c, m))
    run("score_many", lambda: _score_many(c, m))
    run("recommend", lambda: _recommend(c, m))
    run("similar", lambda: _similar(c, m))
    run("state", lambda: _state(c, m, name))
    run("restore", lambda: _restore(c, m, name))
    run("keeps learning", lambda: _keeps_learning(c))
    run("deterministic", lambda: _deterministic(c))
    run("new ids", lambda: _new_ids(c, c.fitted()))
    run("strangers", lambda: _strangers(c))
    run("forget users", lambda: _forget(c, c.fitted()))
    run("forgotten id returns", lambda: _returns(c))
    if report.capabilities.get("adaptable"):
        run("drift adaptation", lambda: _adapts(c))
    if report.capabilities.get("learn_local"):
        run("scale-out deltas", lambda: _scale_out(c))
    try:
        report.hr, report.hr_popularity = _hit_rates(name, c)
    except Exception as exc:  # a figure for information; the checks above say what fails
        report.hr_error = f"{type(exc).__name__}: {exc}"
    return report
