"""The rows of :class:`~online_models.seqnn.SeqNN`: item content, the growing item table and
expiry. Item features are refreshed into per-row token columns (and, with
``catalog_from_features``, rows for every item with features); an item gets a row after
``admission_threshold`` sightings, and a new row its initial vector and token columns;
items and users unseen for ``expiry_seconds`` of event time are freed (an item out of
every context and the replay ring too) so that their rows are reused. Functions of the
model, called by it (:meth:`SeqNN.set_item_features`), its learning
(:mod:`online_models.seqnn_train`) and its scoring (:mod:`online_models.seqnn_scoring`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from online_models.base import grow_rows

if TYPE_CHECKING:
    from online_models.seqnn import SeqNN

__all__ = ["admit", "content_on", "expire", "grow_items", "init_rows", "refresh_features"]


def refresh_features(m: SeqNN) -> None:
    f = m.features
    if f is None or f.version == m._feat_version:
        return
    if m.catalog_from_features:
        rows = m.items.add_many(f.ids)
        grow_items(m)
        init_rows(m, rows)
    if m.use_content:
        m._tok_idx, m._tok_w = f.padded(m.items.ids)
        grow_items(m)
    m._feat_version = f.version
    m._cache = None


def content_on(m: SeqNN) -> bool:
    return m.use_content and m._tokens is not None and m._tok_idx.shape[1] > 0


def grow_items(m: SeqNN) -> None:
    cap = m.items.capacity
    m._ids.ensure(cap)
    m._bias.ensure(cap)
    n = len(m._ids)
    m._alive = grow_rows(m._alive, n, False)
    m._last_seen = grow_rows(m._last_seen, n)
    m._count = grow_rows(m._count, n)
    m._tok_idx = grow_rows(m._tok_idx, n, 0)
    m._tok_w = grow_rows(m._tok_w, n, 0.0)


def init_rows(m: SeqNN, rows: np.ndarray) -> None:
    ok = rows[rows >= 0]
    fresh = np.unique(ok[~m._alive[ok]])
    if len(fresh) == 0:
        return
    init = torch.randn((len(fresh), m.dim), generator=m._gen) * m.init_std
    idx = torch.from_numpy(fresh).to(m._dev)
    m._ids.zero(idx)
    m._bias.zero(idx)
    m._ids.weight[idx] = init.to(m._dev)
    m._alive[fresh] = True
    if m.use_content and m.features is not None:
        fresh_ids = [m.items.ids[r] for r in fresh.tolist()]
        try:
            ti, tw = m.features.padded(fresh_ids, width=m._tok_idx.shape[1])
            m._tok_idx[fresh], m._tok_w[fresh] = ti, tw
        except ValueError:  # longer token lists than any so far: re-pad every row
            m._tok_idx, m._tok_w = m.features.padded(m.items.ids)
            grow_items(m)


def admit(m: SeqNN, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
    if m.admission_threshold <= 1:
        return m.items.add_many(keys)
    rows = np.empty(len(keys), np.int64)
    get, need, pending = m.items.get, m.admission_threshold, m._pending
    for n, (key, t) in enumerate(zip(keys.tolist(), ts.tolist(), strict=True)):
        row = get(key)
        if row < 0:
            seen = pending.setdefault(key, [0.0, t])
            seen[0] += 1
            seen[1] = t
            if seen[0] >= need:
                del pending[key]
                row = m.items.add(key)
        rows[n] = row
    return rows


def expire(m: SeqNN) -> None:
    if m.expiry_seconds is None:
        return
    horizon = m._watermark - m.expiry_seconds
    n = m.items.capacity
    stale = np.flatnonzero(m._alive[:n] & (m._last_seen[:n] < horizon))
    if len(stale):
        ids = m.items.ids
        for row in stale.tolist():
            m.items.remove(ids[row])  # type: ignore[arg-type]
        idx = torch.from_numpy(stale).to(m._dev)
        m._ids.zero(idx)
        m._bias.zero(idx)
        m._alive[stale] = False
        m._last_seen[stale] = 0.0
        m._count[stale] = 0.0
        gone = np.zeros(len(m._alive), bool)
        gone[stale] = True
        # Freed rows leave every context and the replay ring (they will be reused).
        m._seqs = [[r for r in s if not gone[r]] for s in m._seqs]
        hit = (m._r_ctx >= 0) & gone[np.maximum(m._r_ctx, 0)]
        if hit.any():
            m._r_ctx[hit] = -1
            # Keep contexts right-aligned (the block queries the last column).
            order = np.argsort(m._r_ctx >= 0, axis=1, kind="stable")
            m._r_ctx = np.take_along_axis(m._r_ctx, order, axis=1)
        dead = (m._r_tgt >= 0) & gone[np.maximum(m._r_tgt, 0)]
        m._r_w[dead] = 0.0
        m._r_tgt[dead] = -1
        m._cache = None
    for key in [k for k, (_, t) in m._pending.items() if t < horizon]:
        del m._pending[key]
    old = np.flatnonzero(m.users.live_mask() & (m._user_seen[: m.users.capacity]
                                                    < horizon))
    uids = m.users.ids
    for row in old.tolist():
        m.users.remove(uids[row])  # type: ignore[arg-type]
        m._seqs[row] = []
