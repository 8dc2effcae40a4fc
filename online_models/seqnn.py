"""Online neural sequence recommender: one causal self-attention block over the last L items.

A user is their most recent ``max_len`` distinct items (oldest first); the model
predicts the next item, SASRec-style, with one transformer block and item
embeddings tied between input and output. Trained online, per mini-batch:

* **Examples.** Every event whose user already has context is one example:
  context = the user's items before this event (as the batch moves event by
  event), target = the event's item. Repeats of an item already in the context
  are not trained on by default (``skip_repeats``): every consumer of liverec's
  recommendations excludes the user's history, so they are never the answer.
* **Steps and replay.** ``steps_per_batch`` Adam steps per batch
  (``warmup_steps_per_batch`` while fewer than ``warmup_examples`` examples were
  learned: a young model gains from more steps, a mature one gains little and
  pays for each); each step trains on the batch's examples plus ``replay_batch``
  examples drawn afresh from a bounded ring of the last ``replay_size`` examples
  (context, target, weight).
  With ``step_budget_seconds`` set, the batch's own examples always get one step
  and further (replay) steps stop once the budget is spent -- the knob that keeps
  the model in step with a stream (``last_steps`` / ``steps_total`` say what ran).
* **Softmax.** Full softmax over every live item while the catalogue has at most
  ``full_softmax_max_items`` items; beyond, a sampled softmax over the step's
  targets plus ``n_negatives`` items drawn from the replay ring (so in proportion
  to recent traffic) and, for a ``uniform_negatives`` share, uniformly over the
  clicked items, with the logQ correction of that mixture. Items in an example's context are
  masked out of its softmax (they can never be recommended to that user).
* **Items.** A growing id table with the admission and expiry rules of
  :mod:`online_models.embedding` (``admission_threshold`` sightings before a row;
  rows unseen for ``expiry_seconds`` of event time are freed and reused), plus
  **content**: with item features set (:meth:`SeqNN.set_item_features`), an item's
  embedding is its id row plus the weighted sum of learned vectors of its hashed
  content tokens (:class:`~online_models.content.ItemFeatures`), so an item with
  content but few (or, with ``catalog_from_features``, no) clicks lands near items
  with the same words, genres or decade. Row tables (ids, biases, token vectors)
  use a row-wise lazy Adam (:mod:`online_models.seqnn_layers`: only touched rows
  move; state grows and is recycled with the rows); the dense block uses ``torch.optim.Adam``.

Cost. The steps of one ``learn`` call share one plan (candidates, the rows they
touch, index maps, and the item-content product as a sparse matrix with its
transpose for the backward). The block: keys and values are ``(E[item] + P[pos]) W``,
which is linear, so they are computed once per distinct item of a step and once per
position, then gathered (contiguous, into ``scaled_dot_product_attention``); only
the last (most recent) position is a query -- the representation a
one-block causal transformer gives that position, without the other L-1 queries
a training step would discard. Then residual + LayerNorm, a GELU feed-forward,
residual + LayerNorm. Scoring is ``E @ h + b`` over every item (one matrix
product; ``E`` is cached between learning steps).

Deterministic for a seed on CPU (one torch thread by default; every draw comes
from the model's own generator, which is part of the exported state).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from online_models.base import (
    Batch,
    IdIndex,
    ModelState,
    OnlineModel,
    grow_rows,
    pack_strings,
    top_k,
    unpack_strings,
)
from online_models.content import ItemFeatures
from online_models.seqnn_layers import (
    AttentionBlock,
    GRUEncoder,
    RowTable,
    SparseMM,
    sorted_unique,
    sparse_csr,
)

__all__ = ["SeqNN"]

class _Plan:
    """Candidates, rows, index maps and content matrices of a training step (shared by
    the steps of one ``learn`` call with the full softmax; see :meth:`SeqNN._plan`)."""

    def __init__(self, model: SeqNN, rows: np.ndarray, cand: np.ndarray, cpos: np.ndarray,
                 full: bool, logq: torch.Tensor | None) -> None:
        dev = model._dev
        n = model.items.capacity
        self.rows, self.cpos, self.full, self.logq = rows, cpos, full, logq
        self.t_rows = torch.from_numpy(rows).to(dev)
        contiguous = len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows)
        self.span = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else None
        self.pos = np.zeros(n + 1, np.int64)  # padding -> row 0, masked out anyway
        self.pos[rows] = np.arange(len(rows))
        self.cand_is_rows = len(cand) == len(rows)
        self.c_local = torch.from_numpy(self.pos[cand]).to(dev)
        # Content: a sparse (rows, buckets used) matrix of token weights and its transpose
        # (an embedding_bag's backward over the whole catalogue cost twice as much).
        self.bags: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if model._content_on():
            assert model._tokens is not None
            tw = model._tok_w[rows]
            nz = tw != 0
            if nz.any():
                toks = model._tok_idx[rows][nz]
                n_buckets = model._tokens.weight.shape[0]
                buckets = sorted_unique(toks, n_buckets)
                slot = np.empty(n_buckets, np.int64)  # bucket -> its column
                slot[buckets] = np.arange(len(buckets))
                local = slot[toks]  # np.unique's inverse, without its sort
                vals = tw[nz]
                crow = np.zeros(len(rows) + 1, np.int64)
                np.cumsum(nz.sum(axis=1), out=crow[1:])
                shape = (len(rows), len(buckets))
                # The transpose by a counting sort (scipy's CSR -> CSC): each bucket's
                # rows in row order, as a stable argsort by bucket would give them.
                t = sp.csr_matrix((vals, local, crow), shape=shape).tocsc()
                self.bags = (
                    torch.from_numpy(buckets).to(dev),
                    sparse_csr(crow, local, vals, shape, dev),
                    sparse_csr(t.indptr.astype(np.int64), t.indices.astype(np.int64),
                         t.data, shape[::-1], dev),
                )


class SeqNN(OnlineModel):
    """Online next-item transformer (one block) with replay, admission/expiry and content.

    Parameters
    ----------
    dim
        Embedding and block width.
    max_len
        Context length L (most recent distinct items of the user).
    n_heads
        Attention heads.
    ffn_dim
        Hidden width of the feed-forward layer.
    learning_rate
        Adam step size (dense block and row tables alike). Chosen on the first 30k
        MovieLens ratings: 5e-3 gave HR@10 0.192, 3e-3 0.191, 1e-2 0.182 (2e-3
        0.183, 1e-3 0.165). The best value depends on the data: on the first 30% of
        Online Retail (baskets) 1e-3 gave 0.321 against 0.306 at 5e-3 (item-kNN
        0.317), so pass ``learning_rate=1e-3`` (and ``lookahead=0``, below) for data like
        it (BENCHMARKS.md).
    steps_per_batch
        Adam steps per learned mini-batch (each with a fresh replay draw) once the
        model has learned ``warmup_examples`` examples. First 30k MovieLens ratings:
        2 steps after 4 during the first 10k examples 0.192 HR@10, 4 steps throughout
        0.192 at half the speed, 2 steps throughout 0.183, 3 steps 0.186.
    warmup_steps_per_batch
        Steps per batch while fewer than ``warmup_examples`` examples were learned: a
        young model gains from more steps, a mature one much less (per example).
    warmup_examples
        Examples (events with context) learned with ``warmup_steps_per_batch``.
    replay_size
        Most recent training examples kept for replay.
    replay_batch
        Replayed examples mixed into each step (0 = no replay).
    full_softmax_max_items
        Full softmax while the catalogue has at most this many items, else sampled.
    n_negatives
        Negatives per step of the sampled softmax.
    uniform_negatives
        Share of the negatives drawn uniformly over the clicked items; the rest are
        drawn from the replay ring (in proportion to recent traffic, so cold items are
        seldom negatives). The logQ correction uses the mixture. Sampled softmax on
        the first 30k MovieLens ratings: 0.5 gave HR@10 0.1915 (cold items 0.038),
        0 gave 0.1896 (0.029); the full softmax 0.1922 (0.047).
    use_content
        Add content token vectors to item embeddings when features are set.
    catalog_from_features
        Give every item with features a row at once (scored before its first click);
        ``False`` keeps the catalogue to streamed items, like every other model.
    admission_threshold
        Sightings an item needs before it gets a row (1 = at once).
    expiry_seconds
        Free items and users unseen for this span of event time (``None``: never).
    skip_repeats
        Do not train on events whose item is already in the user's context.
    lookahead
        Each event is also the target of the user's context without its ``j`` most
        recent items, for ``j`` up to ``lookahead`` (what the user's earlier contexts
        led to a little later, not only next; weight ``lookahead_weight``). Consecutive
        items are often in no particular order (ratings entered in one sitting, lines of
        a basket), so a context predicting the next few items learns what follows it
        rather than which comes first. First 30k MovieLens ratings (seeds 0 / 1 / 2):
        1 gave HR@10 0.2009 / 0.2010 / 0.2003 against 0.1922 / 0.1931 / 0.1922 for 0
        (2 with weight 0.25: 0.1971; 3: 0.1875), at 0.62-0.77x of the learn rate (one
        more example per event); whole file 0.1294 against 0.1230 (BENCHMARKS.md). On
        the first 30% of Online Retail (learning rate 1e-3) it lost: 0.3203 against 0.3230.
    lookahead_weight
        Loss weight of a lookahead example relative to the next-item one. First 30k
        MovieLens ratings, lookahead 1: 0.25 / 0.4 / 0.5 / 0.6 / 1.0 gave 0.1961 /
        0.1980 / 0.2009 / 0.1982 / 0.1968.
    init_std
        Standard deviation of a new id row.
    weight_power
        Event weights enter the loss as ``min(w, max_weight)**weight_power`` (0: all 1).
    max_weight
        Cap on an event weight.
    step_budget_seconds
        Wall-clock budget per ``learn`` call for steps after the first (``None``:
        always ``steps_per_batch``; set, learning is no longer deterministic).
    device
        ``"auto"`` (default: CUDA where torch sees a GPU, else the CPU), ``"cpu"`` or
        ``"cuda"`` (refused without a GPU). Learning is deterministic for a seed on the
        CPU; on an H200 it ran 2.4-4.2x faster at batch 256 with the same HR@10.
    num_threads
        torch intra-op threads (process-wide; ``None`` leaves torch's setting).
    initial_capacity
        Item and user rows allocated up front.
    encoder
        ``"attention"`` (the block above) or ``"gru"`` (a one-layer GRU over the
        context, its last state), the alternative the issue asks to measure against.
    seed
        Seed of initialisation, replay and negative sampling.

    Examples
    --------
    >>> m = SeqNN(dim=16, max_len=4, steps_per_batch=2, seed=0)
    >>> seqs = [["a", "b", "c", "d"], ["a", "b", "c", "e"]] * 30
    >>> users = [f"u{n}" for n, s in enumerate(seqs) for _ in s]
    >>> for _ in range(5): m.learn(Batch.from_columns(users, [i for s in seqs for i in s]))
    >>> m.recommend("new", 1, history=["a", "b"], exclude=["a", "b"])[0][0]
    'c'
    """

    name: ClassVar[str] = "seqnn"

    def __init__(
        self,
        dim: int = 64,
        max_len: int = 20,
        n_heads: int = 2,
        ffn_dim: int = 128,
        learning_rate: float = 5e-3,
        steps_per_batch: int = 2,
        warmup_steps_per_batch: int = 4,
        warmup_examples: int = 10_000,
        replay_size: int = 20_000,
        replay_batch: int = 256,
        full_softmax_max_items: int = 4096,
        n_negatives: int = 1024,
        uniform_negatives: float = 0.5,
        use_content: bool = True,
        catalog_from_features: bool = False,
        admission_threshold: int = 1,
        expiry_seconds: float | None = None,
        skip_repeats: bool = True,
        lookahead: int = 1,
        lookahead_weight: float = 0.5,
        init_std: float = 0.05,
        weight_power: float = 0.0,
        max_weight: float = 5.0,
        step_budget_seconds: float | None = None,
        device: str = "auto",
        num_threads: int | None = 1,
        initial_capacity: int = 1024,
        encoder: str = "attention",
        seed: int = 0,
    ) -> None:
        if encoder not in ("attention", "gru"):
            raise ValueError("encoder must be 'attention' or 'gru'")
        self.encoder = encoder
        self.dim = dim
        self.max_len = max_len
        self.n_heads = n_heads
        self.ffn_dim = ffn_dim
        self.learning_rate = learning_rate
        self.steps_per_batch = steps_per_batch
        self.warmup_steps_per_batch = warmup_steps_per_batch
        self.warmup_examples = warmup_examples
        self.replay_size = replay_size
        self.replay_batch = replay_batch
        self.full_softmax_max_items = full_softmax_max_items
        self.n_negatives = n_negatives
        self.uniform_negatives = uniform_negatives
        self.use_content = use_content
        self.catalog_from_features = catalog_from_features
        self.admission_threshold = admission_threshold
        self.expiry_seconds = expiry_seconds
        self.skip_repeats = skip_repeats
        self.lookahead = lookahead
        self.lookahead_weight = lookahead_weight
        self.init_std = init_std
        self.weight_power = weight_power
        self.max_weight = max_weight
        self.step_budget_seconds = step_budget_seconds
        self.device = device
        self.num_threads = num_threads
        self.initial_capacity = initial_capacity
        self.seed = seed

        if num_threads is not None:
            # Small mini-batch ops: extra intra-op threads cost more than they give on a
            # shared box, and one thread keeps float reductions reproducible.
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._dev = torch.device(device)
        if self._dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but torch sees no CUDA device here: use "
                             "'auto' to take the GPU only where there is one, or 'cpu'")

        self.users = IdIndex()
        self.items = IdIndex()
        self.features: ItemFeatures | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            block: nn.Module = (
                AttentionBlock(dim, max_len, n_heads, ffn_dim) if encoder == "attention"
                else GRUEncoder(dim, max_len)
            )
            self._block = block.to(self._dev)
        self._opt = torch.optim.Adam(self._block.parameters(), lr=learning_rate)
        self._gen = torch.Generator().manual_seed(seed)
        self._ids = RowTable(initial_capacity, dim, self._dev)
        self._bias = RowTable(initial_capacity, 0, self._dev)
        self._tokens: RowTable | None = None  # content token vectors (n_buckets, dim)
        self._tok_idx = np.zeros((initial_capacity, 0), np.int64)  # per item row
        self._tok_w = np.zeros((initial_capacity, 0), np.float32)
        self._feat_version = -1
        self._alive = np.zeros(initial_capacity, bool)
        self._last_seen = np.zeros(initial_capacity, np.float64)
        self._count = np.zeros(initial_capacity, np.float64)
        self._pending: dict[str, list[float]] = {}
        self._seqs: list[list[int]] = []  # per user row: item rows, oldest first
        self._user_seen = np.zeros(0, np.float64)
        self._r_ctx = np.full((replay_size, max_len), -1, np.int64)
        self._r_tgt = np.full(replay_size, -1, np.int64)
        self._r_w = np.zeros(replay_size, np.float32)
        self._r_pos = 0
        self._r_len = 0
        self._step = 0
        self._watermark = -np.inf
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        #: Adam steps run by the last ``learn`` call and in total (for metrics)
        self.last_steps = 0
        self.steps_total = 0
        #: training examples (events with context) learned so far
        self.examples_total = 0

    # ------------------------------------------------------------------ features
    def set_item_features(self, features: ItemFeatures) -> None:
        """Use ``features`` for item embeddings (kept by reference and in the state).

        Later changes to ``features`` (``set_text``, e.g. from an ``item_features``
        topic) are picked up at the next ``learn`` or ``score_all``.
        """
        self.features = features
        if self.use_content and self._tokens is None:
            self._tokens = RowTable(features.n_buckets, self.dim, self._dev)
        self._feat_version = -1
        self._refresh_features()

    def _refresh_features(self) -> None:
        f = self.features
        if f is None or f.version == self._feat_version:
            return
        if self.catalog_from_features:
            rows = self.items.add_many(f.ids)
            self._grow_items()
            self._init_rows(rows)
        if self.use_content:
            self._tok_idx, self._tok_w = f.padded(self.items.ids)
            self._grow_items()
        self._feat_version = f.version
        self._cache = None

    # ------------------------------------------------------------------ rows
    def _grow_items(self) -> None:
        cap = self.items.capacity
        self._ids.ensure(cap)
        self._bias.ensure(cap)
        n = len(self._ids)
        self._alive = grow_rows(self._alive, n, False)
        self._last_seen = grow_rows(self._last_seen, n)
        self._count = grow_rows(self._count, n)
        self._tok_idx = grow_rows(self._tok_idx, n, 0)
        self._tok_w = grow_rows(self._tok_w, n, 0.0)

    def _init_rows(self, rows: np.ndarray) -> None:
        ok = rows[rows >= 0]
        fresh = np.unique(ok[~self._alive[ok]])
        if len(fresh) == 0:
            return
        init = torch.randn((len(fresh), self.dim), generator=self._gen) * self.init_std
        idx = torch.from_numpy(fresh).to(self._dev)
        self._ids.zero(idx)
        self._bias.zero(idx)
        self._ids.weight[idx] = init.to(self._dev)
        self._alive[fresh] = True
        if self.use_content and self.features is not None:
            fresh_ids = [self.items.ids[r] for r in fresh.tolist()]
            try:
                ti, tw = self.features.padded(fresh_ids, width=self._tok_idx.shape[1])
                self._tok_idx[fresh], self._tok_w[fresh] = ti, tw
            except ValueError:  # longer token lists than any so far: re-pad every row
                self._tok_idx, self._tok_w = self.features.padded(self.items.ids)
                self._grow_items()

    def _admit(self, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        if self.admission_threshold <= 1:
            return self.items.add_many(keys)
        rows = np.empty(len(keys), np.int64)
        get, need, pending = self.items.get, self.admission_threshold, self._pending
        for n, (key, t) in enumerate(zip(keys.tolist(), ts.tolist(), strict=True)):
            row = get(key)
            if row < 0:
                seen = pending.setdefault(key, [0.0, t])
                seen[0] += 1
                seen[1] = t
                if seen[0] >= need:
                    del pending[key]
                    row = self.items.add(key)
            rows[n] = row
        return rows

    @property
    def torch_device(self) -> str:
        """Where the model learns: ``"cpu"``, or ``"cuda:N (GPU name)"``."""
        if self._dev.type != "cuda":
            return self._dev.type
        index = self._dev.index if self._dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows are freed with their item sequences."""
        for row in self.users.remove_many(users):
            if row < len(self._seqs):
                self._seqs[row] = []
            if row < len(self._user_seen):
                self._user_seen[row] = 0.0

    def _expire(self) -> None:
        if self.expiry_seconds is None:
            return
        horizon = self._watermark - self.expiry_seconds
        n = self.items.capacity
        stale = np.flatnonzero(self._alive[:n] & (self._last_seen[:n] < horizon))
        if len(stale):
            ids = self.items.ids
            for row in stale.tolist():
                self.items.remove(ids[row])  # type: ignore[arg-type]
            idx = torch.from_numpy(stale).to(self._dev)
            self._ids.zero(idx)
            self._bias.zero(idx)
            self._alive[stale] = False
            self._last_seen[stale] = 0.0
            self._count[stale] = 0.0
            gone = np.zeros(len(self._alive), bool)
            gone[stale] = True
            # Freed rows leave every context and the replay ring (they will be reused).
            self._seqs = [[r for r in s if not gone[r]] for s in self._seqs]
            hit = (self._r_ctx >= 0) & gone[np.maximum(self._r_ctx, 0)]
            if hit.any():
                self._r_ctx[hit] = -1
                # Keep contexts right-aligned (the block queries the last column).
                order = np.argsort(self._r_ctx >= 0, axis=1, kind="stable")
                self._r_ctx = np.take_along_axis(self._r_ctx, order, axis=1)
            dead = (self._r_tgt >= 0) & gone[np.maximum(self._r_tgt, 0)]
            self._r_w[dead] = 0.0
            self._r_tgt[dead] = -1
            self._cache = None
        for key in [k for k, (_, t) in self._pending.items() if t < horizon]:
            del self._pending[key]
        old = np.flatnonzero(self.users.live_mask() & (self._user_seen[: self.users.capacity]
                                                        < horizon))
        uids = self.users.ids
        for row in old.tolist():
            self.users.remove(uids[row])  # type: ignore[arg-type]
            self._seqs[row] = []

    # ------------------------------------------------------------------ learning
    def _context_array(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        ctx = np.full((len(seqs), self.max_len), -1, np.int64)
        for n, s in enumerate(seqs):
            if s:
                ctx[n, self.max_len - len(s):] = s
        return ctx

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        self._refresh_features()
        ts = np.asarray(batch.timestamps, np.float64)
        urows = self.users.add_many(batch.users)
        if len(self._user_seen) < self.users.capacity:
            self._user_seen = grow_rows(self._user_seen, self.users.capacity)
        while len(self._seqs) < self.users.capacity:
            self._seqs.append([])
        np.maximum.at(self._user_seen, urows, ts)
        irows = self._admit(batch.items, ts)
        self._grow_items()
        self._init_rows(irows)
        ok = irows >= 0
        np.maximum.at(self._last_seen, irows[ok], ts[ok])
        np.add.at(self._count, irows[ok], 1.0)
        self._watermark = max(self._watermark, float(ts.max()))

        w_all = np.minimum(np.asarray(batch.weights, np.float32), self.max_weight)
        w_all = w_all**self.weight_power if self.weight_power else np.ones_like(w_all)
        ctxs: list[list[int]] = []
        tgts: list[int] = []
        ws: list[float] = []
        L = self.max_len
        for n, (ur, ir) in enumerate(zip(urows.tolist(), irows.tolist(), strict=True)):
            if ir < 0:
                continue
            s = self._seqs[ur]
            repeat = ir in s
            if s and not (repeat and self.skip_repeats):
                ctxs.append(list(s))
                tgts.append(ir)
                ws.append(float(w_all[n]))
                for j in range(1, min(self.lookahead, len(s) - 1) + 1):
                    ctxs.append(s[:-j])
                    tgts.append(ir)
                    ws.append(float(w_all[n]) * self.lookahead_weight)
            if repeat:
                s.remove(ir)
            s.append(ir)
            if len(s) > L:
                del s[0]
        self.last_steps = 0
        if tgts:
            ctx = self._context_array(ctxs)
            tgt = np.asarray(tgts, np.int64)
            w = np.asarray(ws, np.float32)
            self._push_replay(ctx, tgt, w)
            t0 = time.perf_counter()
            budget = self.step_budget_seconds
            steps = (self.warmup_steps_per_batch if self.examples_total < self.warmup_examples
                     else self.steps_per_batch)
            self.examples_total += len(tgt)
            # Every step's replay is drawn first, so that with the full softmax one plan
            # (candidates, rows, content matrices) serves all the steps of this call. The
            # sampled softmax draws fresh negatives per step: negatives shared by a call's
            # steps lost 3% HR@10 on the first 30k MovieLens ratings (0.185 vs 0.190).
            draws = [self._draw_replay(len(tgt)) for _ in range(steps)]
            shared = None
            if self._full_softmax():
                shared = self._plan(np.concatenate([tgt, *(d[1] for d in draws)]),
                                    np.concatenate([ctx, *(d[0] for d in draws)]))
            for k, (rc, rt, rw) in enumerate(draws):
                if k and budget is not None and time.perf_counter() - t0 > budget:
                    break
                sc, st = np.concatenate([ctx, rc]), np.concatenate([tgt, rt])
                self._train_step(sc, st, np.concatenate([w, rw]), shared or self._plan(st, sc))
                self.last_steps += 1
            self.steps_total += self.last_steps
        self._expire()
        self._cache = None

    def _push_replay(self, ctx: np.ndarray, tgt: np.ndarray, w: np.ndarray) -> None:
        size = self.replay_size
        if size <= 0:
            return
        ctx, tgt, w = ctx[-size:], tgt[-size:], w[-size:]
        idx = (self._r_pos + np.arange(len(tgt))) % size
        self._r_ctx[idx], self._r_tgt[idx], self._r_w[idx] = ctx, tgt, w
        self._r_pos = int((self._r_pos + len(tgt)) % size)
        self._r_len = min(size, self._r_len + len(tgt))

    def _draw_replay(self, n_new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The newest n_new entries are this batch's own examples: draw among the older.
        older = self._r_len - n_new
        if self.replay_batch <= 0 or older <= 0:
            return np.zeros((0, self.max_len), np.int64), np.zeros(0, np.int64), np.zeros(
                0, np.float32)
        pick = torch.randint(0, older, (self.replay_batch,), generator=self._gen).numpy()
        idx = (self._r_pos - n_new - 1 - pick) % self.replay_size
        keep = self._r_tgt[idx] >= 0
        idx = idx[keep]
        ctx = self._r_ctx[idx]
        has = (ctx >= 0).any(axis=1)
        return ctx[has], self._r_tgt[idx][has], self._r_w[idx][has]

    def _clicked(self) -> np.ndarray:
        # Items nobody has clicked yet (rows from features alone) are no negatives: their
        # content must not be pushed away from the contexts their look-alikes follow.
        n = self.items.capacity
        return self._alive[:n] & (self._count[:n] > 0)

    def _full_softmax(self) -> bool:
        return int(self._clicked().sum()) <= self.full_softmax_max_items

    def _plan(self, tgt: np.ndarray, ctx: np.ndarray) -> _Plan:
        """Candidates and rows of the steps on these examples (targets and contexts of all
        the steps of one ``learn`` call), with index maps and content matrices.

        Full softmax: the candidates are every clicked item (one plan for all the steps
        of a call). Sampled: the examples' targets plus ``n_negatives`` fresh draws
        (one plan per step).
        """
        n = self.items.capacity
        clicked = self._clicked()
        full = int(clicked.sum()) <= self.full_softmax_max_items
        logq: torch.Tensor | None = None
        if full:
            cand = np.flatnonzero(clicked)
        else:
            mix = self.uniform_negatives
            n_uni = round(self.n_negatives * mix)
            pick = torch.randint(0, self._r_len, (self.n_negatives - n_uni,),
                                 generator=self._gen).numpy()
            negs = self._r_tgt[pick]
            live = np.flatnonzero(clicked)
            uni = live[torch.randint(0, len(live), (n_uni,), generator=self._gen).numpy()]
            cand = sorted_unique(np.concatenate([tgt, negs[negs >= 0], uni]), n)
            # logQ: a candidate's chance under the mixture of draws in proportion to its
            # share of the replay ring and uniform draws over the clicked items.
            ring = self._r_tgt[: self._r_len]
            freq = np.bincount(ring[ring >= 0], minlength=n)[cand]
            q = (1 - mix) * np.maximum(freq, 1) / max(self._r_len, 1) + mix / len(live)
            logq = torch.from_numpy(np.log(q).astype(np.float32)).to(self._dev)
        cpos = np.full(n + 1, -1, np.int64)
        cpos[cand] = np.arange(len(cand))
        used = ctx[ctx >= 0]
        # Contexts hold clicked items only, so with the full softmax rows = candidates.
        covered = full and bool((cpos[used] >= 0).all())
        rows = cand if covered else sorted_unique(np.concatenate([cand, used]), n)
        return _Plan(self, rows, cand, cpos, full, logq)

    def _content_on(self) -> bool:
        return self.use_content and self._tokens is not None and self._tok_idx.shape[1] > 0

    def _train_step(self, ctx: np.ndarray, tgt: np.ndarray, w: np.ndarray, plan: _Plan) -> None:
        dev = self._dev
        n = self.items.capacity
        id_leaf = self._ids.rows_of(plan.t_rows, plan.span).detach().requires_grad_()
        bias_leaf = self._bias.rows_of(plan.t_rows, plan.span).detach().requires_grad_()
        emb = id_leaf
        tok_leaf: torch.Tensor | None = None
        if plan.bags is not None:
            assert self._tokens is not None
            buckets, mat, mat_t = plan.bags
            tok_leaf = self._tokens.weight[buckets].detach().requires_grad_()
            emb = id_leaf + SparseMM.apply(mat, mat_t, tok_leaf)
        valid = ctx >= 0
        ctx_local = plan.pos[np.where(valid, ctx, n)]
        h = self._block(emb, torch.from_numpy(ctx_local).to(dev), torch.from_numpy(valid).to(dev))
        if plan.cand_is_rows:
            logits = torch.addmm(bias_leaf[None], h, emb.T)
        else:
            c_local = plan.c_local
            logits = torch.addmm(bias_leaf[c_local][None], h, emb[c_local].T)
        if plan.logq is not None:
            logits = logits - plan.logq[None]
        # Items in an example's context can never be its answer: out of its softmax.
        ctx_c = plan.cpos[np.where(valid, ctx, n)]
        mask_b, mask_l = np.nonzero((ctx_c >= 0) & (ctx != tgt[:, None]))
        if len(mask_b):
            logits.index_put_(
                (torch.from_numpy(mask_b).to(dev), torch.from_numpy(ctx_c[mask_b, mask_l]).to(dev)),
                torch.tensor(float("-inf"), device=dev),
            )
        target = torch.from_numpy(plan.cpos[tgt]).to(dev)
        wt = torch.from_numpy(w).to(dev)
        loss = (F.cross_entropy(logits, target, reduction="none") * wt).sum() / wt.sum()
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        self._step += 1
        lr = self.learning_rate
        assert id_leaf.grad is not None and bias_leaf.grad is not None
        self._ids.adam(plan.t_rows, id_leaf.grad, lr, self._step, plan.span)
        self._bias.adam(plan.t_rows, bias_leaf.grad, lr, self._step, plan.span)
        if tok_leaf is not None and tok_leaf.grad is not None and plan.bags is not None:
            assert self._tokens is not None
            self._tokens.adam(plan.bags[0], tok_leaf.grad, lr, self._step)

    # ------------------------------------------------------------------ scoring
    def _item_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item row's embedding and bias (cached until the next change)."""
        if self._cache is None:
            n = self.items.capacity
            with torch.no_grad():
                emb = self._ids.weight[:n].clone()
                if self._content_on() and n:
                    assert self._tokens is not None
                    emb += F.embedding_bag(
                        torch.from_numpy(self._tok_idx[:n]).to(self._dev),
                        self._tokens.weight,
                        per_sample_weights=torch.from_numpy(self._tok_w[:n]).to(self._dev),
                        mode="sum",
                    )
            self._cache = (emb, self._bias.weight[:n].clone())
        return self._cache

    def _context_rows(self, user: str, history: Sequence[str]) -> list[int]:
        if history:
            rows = self.items.rows(list(history)[-4 * self.max_len:])
            rows = rows[rows >= 0]
            rows = rows[self._alive[rows]]
            return rows[-self.max_len:].tolist()
        ur = self.users.get(user)
        return list(self._seqs[ur]) if ur >= 0 and ur < len(self._seqs) else []

    def _user_vectors(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        emb, _ = self._item_matrix()
        ctx = self._context_array(contexts)
        rows = np.unique(ctx[ctx >= 0])
        n = self.items.capacity
        pos = np.zeros(n + 1, np.int64)
        pos[rows] = np.arange(len(rows))
        valid = ctx >= 0
        with torch.no_grad():
            return self._block(
                emb[torch.from_numpy(rows).to(self._dev)],
                torch.from_numpy(pos[np.where(valid, ctx, n)]).to(self._dev),
                torch.from_numpy(valid).to(self._dev),
            )

    def _popularity(self) -> np.ndarray:
        return np.log1p(self._count[: self.items.capacity]).astype(np.float32)

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        self._refresh_features()
        n = self.items.capacity
        ctx = self._context_rows(user, history)
        if not ctx or n == 0:
            scores = self._popularity()
        else:
            emb, bias = self._item_matrix()
            with torch.no_grad():
                scores = (emb @ self._user_vectors([ctx])[0] + bias).cpu().numpy()
        scores = np.asarray(scores, np.float32)
        scores[~self._alive[:n]] = -np.inf
        return scores

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """``score_all`` for several users at once: a ``(len(users), capacity)`` array.

        One forward pass for the users with context and one matrix product.
        """
        self._refresh_features()
        n = self.items.capacity
        out = np.empty((len(users), n), np.float32)
        ctxs = [self._context_rows(u, h) for u, h in zip(users, histories, strict=True)]
        has = [k for k, c in enumerate(ctxs) if c]
        out[:] = self._popularity()[None, :]
        if has and n:
            emb, bias = self._item_matrix()
            with torch.no_grad():
                h = self._user_vectors([ctxs[k] for k in has])
                out[has] = (h @ emb.T + bias[None]).cpu().numpy()
        out[:, ~self._alive[:n]] = -np.inf
        return out

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        self._refresh_features()
        row = self.items.get(item)
        if row < 0:
            return []
        emb, _ = self._item_matrix()
        with torch.no_grad():
            norms = emb.norm(dim=1) + 1e-12
            sims = ((emb @ emb[row]) / (norms * norms[row])).cpu().numpy().astype(np.float64)
        n = self.items.capacity
        sims[~self._alive[:n]] = -np.inf
        sims[row] = -np.inf
        ids = self.items.ids
        order = top_k(sims, k)  # argpartition: not a sort of the catalogue
        return [(ids[r], float(sims[r])) for r in order if np.isfinite(sims[r])]

    def item_vectors(self) -> np.ndarray:
        emb, _ = self._item_matrix()
        return emb.cpu().numpy().copy()

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        seq_len = np.asarray([len(s) for s in self._seqs], np.int64)
        flat = np.asarray([r for s in self._seqs for r in s], np.int64)
        pd, po = pack_strings(list(self._pending))
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            **self._ids.to_arrays("ids"),
            **self._bias.to_arrays("bias"),
            "alive": self._alive.astype(np.uint8),
            "last_seen": self._last_seen.copy(),
            "count": self._count.copy(),
            "user_seen": self._user_seen.copy(),
            "seqs.lengths": seq_len,
            "seqs.rows": flat,
            "pending.data": pd,
            "pending.offsets": po,
            "pending.values": np.asarray(list(self._pending.values()), np.float64).reshape(-1, 2),
            "replay.ctx": self._r_ctx.copy(),
            "replay.tgt": self._r_tgt.copy(),
            "replay.w": self._r_w.copy(),
            "generator": self._gen.get_state().numpy().copy(),
        }
        for name, p in self._block.state_dict().items():
            arrays[f"block.{name}"] = p.detach().cpu().numpy().copy()
        for pid, st in self._opt.state_dict()["state"].items():
            for key, val in st.items():
                arrays[f"opt.{pid}.{key}"] = torch.as_tensor(val).cpu().numpy().copy()
        if self._tokens is not None:
            arrays.update(self._tokens.to_arrays("tokens"))
        if self.features is not None:
            arrays.update(self.features.to_arrays("features"))
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "step": self._step,
            "steps_total": self.steps_total,
            "examples_total": self.examples_total,
            "replay_pos": self._r_pos,
            "replay_len": self._r_len,
            "watermark": None if not np.isfinite(self._watermark) else self._watermark,
            "has_features": self.features is not None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        """Restore a :meth:`get_state`; a model learned on a GPU loads on the CPU where
        torch sees no CUDA device (a server or trainer without one), with a warning."""
        params = dict(state.meta["params"])
        if str(params.get("device", "cpu")).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"seqnn was learned on device={params['device']!r}; no CUDA device "
                          "here, so it loads on the CPU", RuntimeWarning, stacklevel=2)
            params["device"] = "cpu"
        m = cls(**{**params, "initial_capacity": 1})
        m.initial_capacity = params["initial_capacity"]
        a = dict(state.arrays)
        dev = m._dev
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m._ids = RowTable.from_arrays(a, "ids", dev)
        m._bias = RowTable.from_arrays(a, "bias", dev)
        m._alive = np.asarray(a["alive"]).astype(bool)
        m._last_seen = np.array(a["last_seen"], np.float64)
        m._count = np.array(a["count"], np.float64)
        m._user_seen = np.array(a["user_seen"], np.float64)
        flat = np.asarray(a["seqs.rows"], np.int64).tolist()
        pos = 0
        m._seqs = []
        for ln in np.asarray(a["seqs.lengths"], np.int64).tolist():
            m._seqs.append(flat[pos : pos + ln])
            pos += ln
        keys = unpack_strings(a["pending.data"], a["pending.offsets"])
        m._pending = {k: list(v) for k, v in zip(keys, a["pending.values"].tolist(), strict=True)}
        m._r_ctx = np.array(a["replay.ctx"], np.int64)
        m._r_tgt = np.array(a["replay.tgt"], np.int64)
        m._r_w = np.array(a["replay.w"], np.float32)
        m._r_pos = int(state.meta["replay_pos"])
        m._r_len = int(state.meta["replay_len"])
        m._step = int(state.meta["step"])
        m.steps_total = int(state.meta["steps_total"])
        m.examples_total = int(state.meta.get("examples_total", 0))
        wm = state.meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        m._gen.set_state(torch.from_numpy(np.array(a["generator"], np.uint8)))
        m._block.load_state_dict(
            {k: torch.from_numpy(np.array(a[f"block.{k}"])) for k in m._block.state_dict()}
        )
        opt_sd = m._opt.state_dict()
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key in a:
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                val = torch.from_numpy(np.array(a[key]))
                opt_state.setdefault(int(pid), {})[name] = val if name == "step" else val.to(dev)
        opt_sd["state"] = opt_state
        m._opt.load_state_dict(opt_sd)
        if "tokens.weight" in a:
            m._tokens = RowTable.from_arrays(a, "tokens", dev)
        if state.meta.get("has_features"):
            m.features = ItemFeatures.from_arrays(a, "features")
            m._tok_idx, m._tok_w = m.features.padded(m.items.ids)
            m._feat_version = m.features.version
        m._tok_idx = grow_rows(m._tok_idx, len(m._alive), 0)
        m._tok_w = grow_rows(m._tok_w, len(m._alive), 0.0)
        return m
