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

Where the pieces live: the model (hyperparameters, its state's layout, the protocol) here;
the torch layers in :mod:`online_models.seqnn_layers`; features, the item table's
admission and growth, and expiry in :mod:`online_models.seqnn_rows`; learning (examples,
replay, the step plan, the training step) in :mod:`online_models.seqnn_train`; scoring in
:mod:`online_models.seqnn_scoring`; the snapshot state in :mod:`online_models.seqnn_state`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np
import torch
from torch import nn

from online_models import seqnn_rows, seqnn_scoring, seqnn_state, seqnn_train
from online_models.base import Batch, IdIndex, ModelState, OnlineModel
from online_models.content import ItemFeatures
from online_models.seqnn_layers import AttentionBlock, GRUEncoder, RowTable

__all__ = ["SeqNN"]


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
        MovieLens ratings, a second's ratings in hash order (BENCHMARKS.md, "seqnn
        re-chosen in hash tie order"), together with the warm-up below: 2e-3 gave
        HR@10 0.2018 (mean of seeds 0-2) against 0.2012 for 3e-3, and 0.1927 for
        session 22's 5e-3 with its 10k-example, 4-step warm-up. (In the file's tie
        order 5e-3 gave 0.192, 3e-3 0.191, 1e-2 0.182, 2e-3 0.183 and 1e-3 0.165 with
        that shorter warm-up.) The best value depends on the data: on the first 30% of
        Online Retail (baskets) 1e-3 gave 0.321 against 0.306 at 5e-3 (item-kNN
        0.317), so pass ``learning_rate=1e-3`` (and ``lookahead=0``, below) for data like
        it (BENCHMARKS.md).
    steps_per_batch
        Adam steps per learned mini-batch (each with a fresh replay draw) once the
        model has learned ``warmup_examples`` examples. First 30k MovieLens ratings
        (file tie order): 2 steps after 4 during the first 10k examples 0.192 HR@10,
        4 steps throughout 0.192 at half the speed, 2 steps throughout 0.183, 3 steps
        0.186.
    warmup_steps_per_batch
        Steps per batch while fewer than ``warmup_examples`` examples were learned: a
        young model gains from more steps, a mature one much less (per example).
        First 30k MovieLens ratings (hash tie order, learning rate 5e-3, seed 0): 6
        steps for the first 30k examples 0.1980, 4 for 30k 0.1972, 4 for 10k (the
        earlier default) 0.1919, 8 for 10k 0.1930.
    warmup_examples
        Examples (events with context; a lookahead example counts too) learned with
        ``warmup_steps_per_batch``: on MovieLens the first 30k are about the first
        17k ratings. 50k gave 0.1976 with 4 steps, 100k 0.1953.
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
        learning_rate: float = 2e-3,
        steps_per_batch: int = 2,
        warmup_steps_per_batch: int = 6,
        warmup_examples: int = 30_000,
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
        seqnn_rows.refresh_features(self)

    # ------------------------------------------------------------------ rows
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

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Batch) -> None:
        seqnn_train.learn(self, batch)

    # ------------------------------------------------------------------ scoring
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return seqnn_scoring.score_all(self, user, history)

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """``score_all`` for several users at once: a ``(len(users), capacity)`` array.

        One forward pass for the users with context and one matrix product.
        """
        return seqnn_scoring.score_many(self, users, histories)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        return seqnn_scoring.similar(self, item, k)

    def item_vectors(self) -> np.ndarray:
        return seqnn_scoring.item_vectors(self)

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        return seqnn_state.get_state(self)

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
        seqnn_state.load_state(m, state)
        return m
