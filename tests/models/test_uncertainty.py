"""``online_models.uncertainty.UserHits``: hit-rate intervals by a bootstrap over users."""

from __future__ import annotations

import math

import numpy as np

from online_models.uncertainty import UserHits


def test_one_event_per_user_gives_about_the_binomial_interval() -> None:
    rng = np.random.default_rng(1)
    hits = (rng.random(2000) < 0.3).astype(np.int8)
    users = np.array([f"u{i}" for i in range(2000)], object)
    by_user = UserHits(["m"])
    by_user.add(users, {"m": hits})
    p = by_user.rate("m")
    half = 1.96 * math.sqrt(p * (1 - p) / 2000)
    lo, hi = by_user.interval("m")
    assert lo < p < hi
    assert abs((hi - lo) / 2 - half) < 0.2 * half


def test_a_heavy_user_widens_the_interval() -> None:
    # 1,000 events: half from one user who is always hit, half from 500 users never hit.
    users = np.array(["heavy"] * 500 + [f"u{i}" for i in range(500)], object)
    hits = np.array([1] * 500 + [0] * 500, np.int8)
    by_user = UserHits(["m"])
    by_user.add(users, {"m": hits})
    lo, hi = by_user.interval("m")
    naive = 2 * 1.96 * math.sqrt(0.25 / 1000)  # as if the events were independent
    assert by_user.rate("m") == 0.5 and hi - lo > 5 * naive


def test_the_paired_difference_of_one_model_with_itself_is_zero() -> None:
    rng = np.random.default_rng(2)
    users = rng.choice(np.array([f"u{i}" for i in range(50)], object), 800)
    a = (rng.random(800) < 0.4).astype(np.int8)
    b = np.where(rng.random(800) < 0.9, a, 1 - a).astype(np.int8)  # mostly agrees with a
    by_user = UserHits(["a", "a2", "b"])
    for part in np.array_split(np.arange(800), 7):  # added batch by batch
        by_user.add(users[part], {"a": a[part], "a2": a[part], "b": b[part]})
    assert by_user.difference("a", "a2") == (0.0, 0.0, 0.0)
    diff, lo, hi = by_user.difference("a", "b")
    assert diff == by_user.rate("a") - by_user.rate("b") and lo <= diff <= hi
    # paired: narrower than the two rates' own intervals together
    (alo, ahi), (blo, bhi) = by_user.interval("a"), by_user.interval("b")
    assert hi - lo < (ahi - alo) + (bhi - blo)


def test_nothing_evaluated_or_too_few_users_give_nans() -> None:
    by_user = UserHits(["m", "n"])
    by_user.add(np.array([], object), {"m": np.array([], np.int8), "n": np.array([], np.int8)})
    assert by_user.n_users == 0 and all(map(math.isnan, by_user.interval("m")))
    # One user: every replicate is that user's rate, an interval of width 0 that would
    # call any difference certain.
    users = np.array(["u"] * 4, object)
    by_user.add(users, {"m": np.array([1, 0, 0, 0]), "n": np.array([1, 1, 1, 0])})
    assert all(map(math.isnan, by_user.interval("m")))
    diff, lo, hi = by_user.difference("m", "n")
    assert diff == -0.5 and math.isnan(lo) and math.isnan(hi)
