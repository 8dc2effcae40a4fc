"""The factor models' batch query vectors equal their one-query form bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from online_models.base import Batch
from online_models.bpr import BPR
from online_models.embedding import EmbeddingModel


@pytest.mark.parametrize("make", [
    lambda: BPR(fold_in_items=8, seed=3),
    lambda: EmbeddingModel(fold_in_items=8, seed=3),
    lambda: BPR(fold_in_items=0, seed=3),  # 0: the whole history
], ids=["bpr", "embedding", "bpr-whole-history"])
def test_query_vectors_equal_the_one_query_form(make: Callable[[], BPR | EmbeddingModel]
                                                 ) -> None:
    rng = np.random.default_rng(0)
    model = make()
    for _ in range(3):
        model.learn(Batch.from_columns([f"u{i}" for i in rng.integers(0, 50, 2000)],
                                       [f"i{i}" for i in rng.integers(0, 300, 2000)]))
    users, histories = [], []
    for j in range(300):  # known and unknown users, empty and partly unknown histories
        users.append(f"u{rng.integers(0, 80)}" if j % 3 else "stranger")
        histories.append([f"i{x}" for x in rng.integers(0, 330, rng.integers(0, 12))])
    q, has = model._query_vectors(users, histories)
    for r, (user, hist) in enumerate(zip(users, histories, strict=True)):
        one = model._query_vector(user, hist)
        assert has[r] == (one is not None)
        if one is not None:
            got = q[r].numpy() if isinstance(q, torch.Tensor) else q[r]
            want = one.numpy() if isinstance(one, torch.Tensor) else one
            np.testing.assert_array_equal(got, want)
    assert 0 < has.sum() < len(users)
