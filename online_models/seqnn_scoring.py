"""How :class:`~online_models.seqnn.SeqNN` scores: ``E @ h + b`` over every item, with
the item matrix ``E`` (id rows plus content, and the biases ``b``) cached until the next
change, ``h`` the encoder's output for the user's context (the given history, else the
user's own sequence) and popularity for a user without context; plus item-item cosine
similarity and the item vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from online_models.base import top_k
from online_models.seqnn_rows import content_on, refresh_features
from online_models.seqnn_train import context_array

if TYPE_CHECKING:
    from online_models.seqnn import SeqNN

__all__ = ["context_rows", "item_matrix", "item_vectors", "popularity", "score_all",
           "score_many", "similar", "user_vectors"]


def item_matrix(m: SeqNN) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item row's embedding and bias (cached until the next change)."""
    if m._cache is None:
        n = m.items.capacity
        with torch.no_grad():
            emb = m._ids.weight[:n].clone()
            if content_on(m) and n:
                assert m._tokens is not None
                emb += F.embedding_bag(
                    torch.from_numpy(m._tok_idx[:n]).to(m._dev),
                    m._tokens.weight,
                    per_sample_weights=torch.from_numpy(m._tok_w[:n]).to(m._dev),
                    mode="sum",
                )
        m._cache = (emb, m._bias.weight[:n].clone())
    return m._cache


def context_rows(m: SeqNN, user: str, history: Sequence[str]) -> list[int]:
    if history:
        rows = m.items.rows(list(history)[-4 * m.max_len:])
        rows = rows[rows >= 0]
        rows = rows[m._alive[rows]]
        return rows[-m.max_len:].tolist()
    ur = m.users.get(user)
    return list(m._seqs[ur]) if ur >= 0 and ur < len(m._seqs) else []


def user_vectors(m: SeqNN, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
    emb, _ = item_matrix(m)
    ctx = context_array(m, contexts)
    rows = np.unique(ctx[ctx >= 0])
    n = m.items.capacity
    pos = np.zeros(n + 1, np.int64)
    pos[rows] = np.arange(len(rows))
    valid = ctx >= 0
    with torch.no_grad():
        return m._block(
            emb[torch.from_numpy(rows).to(m._dev)],
            torch.from_numpy(pos[np.where(valid, ctx, n)]).to(m._dev),
            torch.from_numpy(valid).to(m._dev),
        )


def popularity(m: SeqNN) -> np.ndarray:
    return np.log1p(m._count[: m.items.capacity]).astype(np.float32)


def score_all(m: SeqNN, user: str, history: Sequence[str] = ()) -> np.ndarray:
    refresh_features(m)
    n = m.items.capacity
    ctx = context_rows(m, user, history)
    if not ctx or n == 0:
        scores = popularity(m)
    else:
        emb, bias = item_matrix(m)
        with torch.no_grad():
            scores = (emb @ user_vectors(m, [ctx])[0] + bias).cpu().numpy()
    scores = np.asarray(scores, np.float32)
    scores[~m._alive[:n]] = -np.inf
    return scores


def score_many(
    m, users: Sequence[str], histories: Sequence[Sequence[str]]
) -> np.ndarray:
    """:meth:`SeqNN.score_many`: one forward pass for the users with context and one
    matrix product."""
    refresh_features(m)
    n = m.items.capacity
    out = np.empty((len(users), n), np.float32)
    ctxs = [context_rows(m, u, h) for u, h in zip(users, histories, strict=True)]
    has = [k for k, c in enumerate(ctxs) if c]
    out[:] = popularity(m)[None, :]
    if has and n:
        emb, bias = item_matrix(m)
        with torch.no_grad():
            h = user_vectors(m, [ctxs[k] for k in has])
            out[has] = (h @ emb.T + bias[None]).cpu().numpy()
    out[:, ~m._alive[:n]] = -np.inf
    return out


def similar(m: SeqNN, item: str, k: int = 10) -> list[tuple[str, float]]:
    refresh_features(m)
    row = m.items.get(item)
    if row < 0:
        return []
    emb, _ = item_matrix(m)
    with torch.no_grad():
        norms = emb.norm(dim=1) + 1e-12
        sims = ((emb @ emb[row]) / (norms * norms[row])).cpu().numpy().astype(np.float64)
    n = m.items.capacity
    sims[~m._alive[:n]] = -np.inf
    sims[row] = -np.inf
    ids = m.items.ids
    order = top_k(sims, k)  # argpartition: not a sort of the catalogue
    return [(ids[r], float(sims[r])) for r in order if np.isfinite(sims[r])]


def item_vectors(m: SeqNN) -> np.ndarray:
    emb, _ = item_matrix(m)
    return emb.cpu().numpy().copy()
