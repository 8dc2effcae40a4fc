"""Events that arrive together (one user, one timestamp: a basket, a page of ratings)
scored together: against the user's history before the group, never with the group's
earlier events as context (``PrequentialEvaluator(ties_together=True)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from liverec.cli import app as cli
from online_models.base import Batch, IdIndex, OnlineModel
from online_models.evaluation import PrequentialEvaluator
from online_models.history import UserHistory

events = st.lists(st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdef"),
                            st.integers(0, 3)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(2, 50))
def test_without_groups_the_grouped_path_is_the_plain_one(rows: list, max_items: int) -> None:
    users, items = [r[0] for r in rows], [r[1] for r in rows]
    plain, grouped = UserHistory(max_items=max_items), UserHistory(max_items=max_items)
    marks = [True] * len(rows)
    a = plain.advance(users, items, marks)
    b = grouped.advance(users, items, marks, same_group=[False] * len(rows))
    assert a[0].tolist() == b[0].tolist() and a[1] == b[1]
    assert all(plain.get(u) == grouped.get(u) for u in "uvw")


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 6))
def test_a_grouped_event_is_judged_by_the_history_before_its_group(
        rows: list, max_items: int) -> None:
    rows = sorted(rows, key=lambda r: r[2])  # time order
    users, items = [r[0] for r in rows], [r[1] for r in rows]
    # grouped: the same user and timestamp as the user's previous event
    same = []
    last: dict[str, int] = {}
    for u, _, t in rows:
        same.append(last.get(u) == t)
        last[u] = t
    new, before = UserHistory(max_items=max_items).advance(
        users, items, [True] * len(rows), same_group=same)
    for i, (u, item, t) in enumerate(rows):
        prior = [r[1] for r in rows[:i] if r[0] == u and r[2] < t]  # before the group
        in_group = [r[1] for r in rows[:i] if r[0] == u and r[2] == t]
        # distinct, latest last, the newest max_items of them
        context = list(dict.fromkeys(reversed(prior)))[::-1][-max_items:]
        expect_new = bool(context) and item not in context and item not in in_group
        assert new[i] == expect_new, (rows, i)
        if expect_new:
            assert before[i] == context, (rows, i)


class NextLetter(OnlineModel):
    """Scores the letter after the user's latest history item highest."""

    name = "next-letter"

    def __init__(self) -> None:
        self.items, self.users = IdIndex(), IdIndex()

    def learn(self, batch: Batch) -> None:
        self.items.add_many(batch.items)

    def score_all(self, user: str, history: tuple[str, ...] | list[str] = ()) -> np.ndarray:
        last = ord(history[-1])
        return -np.asarray([abs(ord(i) - last - 1) for i in self.items.ids], np.float32)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        return []

    def get_state(self) -> dict:  # type: ignore[type-arg]
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> NextLetter:  # type: ignore[type-arg]
        raise NotImplementedError


def test_together_the_group_gives_no_context_to_its_own_events() -> None:
    hr = {}
    for together in (False, True):
        ev = PrequentialEvaluator({"m": NextLetter()}, k=1, ties_together=together,
                                  cold_threshold=0)
        ev.process(Batch.from_columns(["v", "v", "v", "u"], ["a", "b", "c", "a"], None,
                                      [0, 0, 0, 0]))
        out = ev.process(Batch.from_columns(["u", "u"], ["b", "c"], None, [1, 1]))
        hr[together] = out.models["m"].hits.tolist()
    # In order, "c" follows "b" in u's history: a hit no live system could serve, as
    # both arrive at once; together, both are scored after "a" alone.
    assert hr == {False: [1, 1], True: [1, 0]}


def test_a_users_first_group_is_not_evaluable_together(tmp_path: Path) -> None:
    ev = PrequentialEvaluator({"m": NextLetter()}, k=1, ties_together=True)
    ev.process(Batch.from_columns(["v", "v", "v"], ["a", "b", "c"], None, [0, 1, 1]))
    out = ev.process(Batch.from_columns(["u", "u", "u"], ["a", "b", "c"], None, [2, 2, 2]))
    assert out.n_eligible == 0 and ev.excluded["first_user_event"] == 3


def test_the_cli_scores_together_and_says_so(tmp_path: Path) -> None:
    data, report = tmp_path / "baskets.csv", tmp_path / "report.json"
    lines = ["user_id,item_id,timestamp"]
    for user in range(30):  # a basket a,b,c,d, then a basket e,f,g,h, lines in order
        lines += [f"u{user},{item},{1000 + user}" for item in "abcd"]
        lines += [f"u{user},{item},{2000 + user}" for item in "efgh"]
    data.write_text("\n".join(lines) + "\n")
    hr = {}
    for mode in ("sequential", "together"):
        res = CliRunner().invoke(cli, ["evaluate", str(data), "--models", "sequence",
                                       "--k", "1", "--batch-size", "3",
                                       "--tie-scoring", mode, "--json", str(report)])
        assert res.exit_code == 0, res.output
        assert f"scored {mode}" in res.output
        out = orjson.loads(report.read_bytes())
        assert out["tie_scoring"] == mode
        hr[mode] = out["models"]["sequence"]["hr@1"]
    # In order, each line's item follows the line before it: nearly every one is a
    # hit once the transitions are learned. Together, the second basket is scored
    # after "d": only "e" follows it.
    assert hr["sequential"] > 0.9 and 0.2 < hr["together"] < 0.3, hr
