"""A scale-out trainer's item side (:class:`ItemSide`): folding, evaluation, merging.

The count models' learning never reads item state, so only the **merge writer**
(the owner of the input topic's last partition, which the range assignor gives the
fewest partitions) folds the committed update messages (everyone's, its own too) into
its models' item state, those read in each ``fold_every_s`` at once
(``apply_deltas``; :class:`~trainer.folding.UpdateFold`); the others skip that work
(with bpr, whose steps read item factors, every trainer folds). The item state is
therefore a function of the update topic alone; the merge writer snapshots it with
the update-topic offsets it reflects under ``<snapshots>/items/<instance>/``. A
trainer that becomes the merge writer (or merges at shutdown) first adopts the most
advanced item snapshot, keeping its own users' state, and folds the topic from that
snapshot's offsets.

**Serving.** The merge writer writes, every ``merge_every_s`` once it has read the
update topic to its end or folded past the update offsets of the merged snapshot
being served, an ordinary snapshot into ``<snapshots>/`` (the merged
model: its item state plus every partition's latest user state; ``events_total``
summed over partitions), which ``liverec serve --snapshots`` loads like any other;
none while nothing it is made of moved since the last one.

**Evaluation.** A trainer that folds the update topic and has read it to its end
holds the whole item state, so it evaluates its own partitions' events
prequentially before learning them (:class:`~trainer.evaluation.TrainerEvaluation`:
the same sample, governor, concept-drift monitors and metrics as a single trainer),
and the merged snapshot carries the figures for the server's dashboard. With the
count models only the merge writer folds, so the figures rest on the last partition's
owner's partitions, a sample of the users by partition; with bpr every trainer
evaluates its own. The evaluator keeps its own user histories, which start empty
whenever a trainer takes up folding (its item state was just replaced): a user's
events are evaluable from their second one after that. Drift adaptation and data
drift do not run in this mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from online_models import registry
from online_models.base import OnlineModel, UserHistory
from online_models.deltas import learns_from_item_state
from online_models.ownership import heartbeat_owner
from online_models.snapshot import SnapshotError, SnapshotStore
from trainer.evaluation import TrainerEvaluation
from trainer.folding import UpdateFold
from trainer.merged import best_item_snapshot, gather_partitions
from trainer.metrics import TrainerMetrics
from trainer.partition_state import PartitionState, PartitionStore, merge_histories
from trainer.settings import TrainerSettings

__all__ = ["ItemSide", "holds_served"]

# The scale-out trainer's log lines keep its one logger name (bench/bench_scale_out.py
# and operators filter on "trainer.partitioned").
log = logging.getLogger("trainer.partitioned")


def holds_served(folded: Mapping[int, int], served: Mapping[str, Any] | None) -> bool:
    """Whether an item state folded up to the update offsets ``folded`` holds all that
    the served merged snapshot's did (``served``: its update offsets, partitions as
    strings, as its manifest writes them; None: no merged snapshot says).

    >>> holds_served({0: 10, 1: 5}, {"0": 10, "1": 4})
    True
    >>> holds_served({0: 10}, {"0": 10, "1": 4})
    False
    >>> holds_served({0: 3}, None)
    False
    >>> holds_served({}, {})
    True
    """
    if served is None:
        return False
    return all(folded.get(int(p), 0) >= int(o) for p, o in served.items())


class ItemSide:
    """The item state of one scale-out trainer and what rests on it (see the module
    docstring).

    Parameters
    ----------
    settings
        The trainer's settings.
    models
        The trainer's models by name (the dict ``fold`` folds into: a model adopted
        from an item snapshot replaces its entry).
    fold
        The fold of the update topic.
    metrics
        The trainer's metrics.
    root
        The snapshot location (``<snapshots>``).
    instance
        This trainer's instance id.
    fresh_state
        A partition's empty user state (for the merge: partitions never snapshotted).
    """

    def __init__(self, settings: TrainerSettings, models: dict[str, OnlineModel],
                 fold: UpdateFold, metrics: TrainerMetrics, root: Path, instance: str,
                 fresh_state: Callable[[int], PartitionState]) -> None:
        self.settings = settings
        self.names = settings.model_names()
        self.models = models
        self.fold = fold
        self.metrics = metrics
        self.root = root
        self.instance = instance
        self.topic = fold.topic
        self.updates = fold.updates
        self.fresh_state = fresh_state
        self.items_store = SnapshotStore(root / "items" / instance,
                                         keep=settings.keep_snapshots)
        self.merged_store = SnapshotStore(root, keep=settings.keep_snapshots)
        self.last_merge = 0.0
        #: partitions of the update topic (recounted when folding begins)
        self.n_updates = 1
        #: partitions of the input topic (its last one's owner folds); the trainer
        #: recounts them after every assignment
        self.n_input = 1
        self.update_lag: int | None = None
        #: this trainer folds the update topic (it owns the last partition, or merges at
        #: shutdown); ``caught_up``: it has read the topic to its end since it began
        self.folding = False
        self.caught_up = False
        #: a model's learning reads item state (BPR): every trainer folds, always
        self.fold_always = any(learns_from_item_state(m) for m in models.values())
        #: prequential evaluation of the own partitions' events, while folding and
        #: current (None otherwise; rebuilt whenever the item state is replaced)
        self.evaluation: TrainerEvaluation | None = None
        #: what the last item snapshot and merge were made of (:meth:`_merge_inputs`)
        self._merged_inputs: tuple[Any, ...] | None = None
        #: the last fold read all the update messages that had arrived, and some were
        #: folded since folding began (a backlog read in full batches is not current)
        self.fold_current = False

    # ------------------------------------------------------------------ folding

    def rebase(self, parts: Mapping[int, PartitionState]) -> None:
        """Adopt the most advanced item snapshot if it is ahead of this trainer's item
        state, keeping the state of the users this trainer owns (``parts``)."""
        snap = best_item_snapshot(self.root, self.updates,
                                  ahead_of=sum(self.fold.offsets.values()))
        if snap is None:
            log.info("no item snapshot ahead: the item state is folded from %s",
                     self.fold.offsets or "the update topic's start")
            return
        offsets = {int(p): int(o) for p, o in snap.offsets.get(self.updates, {}).items()}
        users = sorted(set().union(*(st.users for st in parts.values())))
        kept = {n: m.user_state(users)  # type: ignore[attr-defined]
                for n, m in self.models.items()}
        for name in self.names:
            if name in snap.models:
                self.models[name] = snap.models[name]
        registry.bind(self.models)
        for name, model in self.models.items():
            model.forget_users([u for u in model.users.ids if u])
            if users:
                model.load_user_state(kept[name])  # type: ignore[attr-defined]
        self.fold.offsets = offsets
        self.fold.coverage = {int(p): int(n)
                              for p, n in snap.extra_meta.get("coverage", {}).items()}
        log.info("item state from %s (update offsets %s)", snap.path, self.fold.offsets)

    def start_folding(self, parts: Mapping[int, PartitionState]) -> None:
        """Become the one that folds the update topic (see the module docstring)."""
        upd = self.fold.consumer
        assert upd is not None
        self.fold.discard_pending()  # re-read below, from the item state's offsets
        self.rebase(parts)
        self.evaluation = None  # its evaluator maps the replaced models' rows
        ups = sorted(upd.partitions_for(self.updates))
        self.n_updates = len(ups) or self.n_updates
        begin = upd.beginning_offsets([(self.updates, p) for p in ups])
        # Every partition from the item state's offset, in one assign.
        upd.assign_at({(self.updates, p): max(self.fold.offsets.get(p, 0),
                                              begin[(self.updates, p)]) for p in ups})
        self.folding, self.caught_up, self.fold_current = True, False, False
        log.info("folding the update topic from offsets %s", self.fold.offsets or "0")

    def stop_folding(self) -> None:
        assert self.fold.consumer is not None
        self.fold.consumer.assign([])
        self.fold.discard_pending()
        self.folding = self.caught_up = False
        self.evaluation = None
        TrainerEvaluation.clear_gauges(self.metrics, self.names)
        self.metrics.update_lag.set(float("nan"))
        self.metrics.partition_events.clear()  # only a folding trainer knows them
        log.info("partition %d went elsewhere: no longer folding the update topic",
                 self.fold_partition)

    @property
    def fold_partition(self) -> int:
        """The input partition whose owner folds: the last one.

        Under the range assignor (both clients use it) the last member of the group
        gets the last partition and the fewest partitions, so the fold lands on a
        trainer that learns no more than the others: with ``2N - 1`` partitions for
        ``N`` trainers, it learns one partition and the others two each.
        """
        return self.n_input - 1

    def sync_role(self, parts: Mapping[int, PartitionState]) -> None:
        """Fold the update topic exactly while this trainer owns the last partition
        (always, when a model's learning reads item state)."""
        want = self.fold_partition in parts or self.fold_always
        if want and not self.folding:
            self.start_folding(parts)
        elif not want and self.folding:
            self.stop_folding()

    def read(self) -> None:
        """Read (and, when due, fold) what arrived on the update topic."""
        folded = self.fold.read(UpdateFold.READ_MAX)
        # Fewer than asked for: all that had arrived is folded.
        self.fold_current = ((self.fold_current or folded > 0)
                             and folded < UpdateFold.READ_MAX)

    def drain(self, timeout_s: float) -> None:
        """Fold the update topic to its end (at most ``timeout_s``)."""
        self.caught_up = self.fold.drain(timeout_s) or self.caught_up

    # ------------------------------------------------------------------ evaluation

    def evaluating(self, closing: bool) -> TrainerEvaluation | None:
        """The evaluation, while this trainer holds the whole, current item state: it
        folds, and it has read the update topic to its end once or its last fold read
        all that had arrived (not while it folds a backlog, nor while ``closing``)."""
        if not self.folding or not (self.caught_up or self.fold_current) or closing:
            return None
        if not any(self.fold.coverage.values()):
            # Nothing folded yet (a read waits for ``fold_every_s``; the first update
            # messages wait for ``commit_every_s``): an empty item state would score
            # every event a miss.
            return None
        if self.evaluation is None:
            self.evaluation = TrainerEvaluation(
                self.models, UserHistory(max_items=self.settings.history_items,
                                         max_users=self.settings.history_max_users),
                self.settings, self.metrics)
            log.info("evaluating this trainer's partitions prequentially")
        return self.evaluation

    # ------------------------------------------------------------------ snapshots

    def checkpoint(self, parts: Mapping[int, PartitionState], force: bool = False) -> None:
        """While folding, the update lag every ``merge_every_s`` and, once the update
        topic was read to its end or the served merged snapshot's update offsets were
        folded (:func:`holds_served`), the item snapshot and the merge."""
        m = self.metrics
        if not self.folding or (
                not force and time.time() - self.last_merge < self.settings.merge_every_s):
            return
        self.last_merge = time.time()
        self.fold.fold()  # the item snapshot below reflects all that was read
        try:
            self.update_lag = self.fold.lag()
            m.update_lag.set(self.update_lag)
        except Exception:
            log.debug("update lag not available", exc_info=True)
        if self.update_lag == 0:
            self.caught_up = True
        elif not self.caught_up and not holds_served(
                self.fold.offsets, served := self._served_updates()):
            # A merge now could hold older item state than the one being served. (Not
            # "wait for a lag of 0": while the stream flows, the transaction this
            # trainer settled just before the lag was read is always unread, and the
            # merges would wait for the stream to pause.)
            log.info("item snapshot and merge wait: the served merged snapshot's item "
                     "state is ahead (update offsets %s, folded %s; %s update records "
                     "unread)", served, self.fold.offsets, self.update_lag)
            return
        inputs = self._merge_inputs(parts)
        if not force and inputs == self._merged_inputs:
            return  # nothing moved since the last merge: no identical new version
        written = True
        try:
            self.items_store.write(
                self.models, history=merge_histories([], self.settings.history_items),
                offsets={self.updates: dict(self.fold.offsets)},
                events_total=0, watermark=None,
                extra_meta={"instance": self.instance, "kind": "items",
                            "coverage": {str(p): n for p, n in self.fold.coverage.items()}})
        except Exception:
            written = False
            m.snapshot_errors.inc()
            log.exception("item snapshot failed")
        if self.fold_partition in parts or (force and parts):
            try:
                self.write_merged(parts)
            except Exception:
                written = False
                m.snapshot_errors.inc()
                log.exception("merged snapshot failed")
        self._merged_inputs = inputs if written else None

    def _merge_inputs(self, parts: Mapping[int, PartitionState]) -> tuple[Any, ...]:
        """What an item snapshot and merge are made of: the update offsets folded, the
        own partitions' offsets, and the other partitions' snapshots (each one's newest
        version directory with its files' sizes and times: a version still being
        written, or a number reused after the directory was recreated, differs from the
        finished one) and owner. The same again: a merge would be a copy of the last
        one (and, kept, would push the last different version out of
        ``keep_snapshots``)."""
        others = []
        for p in range(self.n_input):
            if p not in parts:
                store = PartitionStore(self.root, p, self.settings.keep_snapshots).store
                newest = max(store.versions(), default=None)
                files = store.fingerprint(newest) if newest is not None else ()
                others.append((p, newest, files, heartbeat_owner(store.root)))
        return (tuple(sorted(self.fold.offsets.items())),
                tuple(sorted((p, st.offset) for p, st in parts.items())), tuple(others))

    def _served_updates(self) -> dict[str, Any] | None:
        """The update offsets (by partition, as written) whose fold the served merged
        snapshot holds; None without a readable merged snapshot that names them."""
        try:
            manifest = self.merged_store.read_manifest()
        except (SnapshotError, OSError, ValueError):
            return None
        scale_out = manifest.get("extra_meta", {}).get("scale_out")
        served = scale_out.get("updates", {}).get(self.updates) \
            if isinstance(scale_out, dict) else None
        return served if isinstance(served, dict) else None

    def _merged_metrics(self) -> dict[str, Any] | None:
        """This trainer's evaluation figures; a trainer that evaluates nothing (it does
        not fold) carries the latest merged snapshot's forward, so a merge at its
        shutdown does not blank the dashboard."""
        if self.evaluation is not None:
            return self.evaluation.summary()
        try:
            previous = self.merged_store.read_manifest().get("metrics")
        except (SnapshotError, OSError, ValueError):
            return None
        return previous if isinstance(previous, dict) else None

    def write_merged(self, parts: Mapping[int, PartitionState]) -> int:
        """Write the servable merged model into ``<snapshots>/`` (``parts``: this
        trainer's own partitions, live); returns its version."""
        t0 = time.perf_counter()
        clones = registry.bind({n: registry.from_state(m.get_state())
                                for n, m in self.models.items()})
        keep = self.settings.keep_snapshots
        got = gather_partitions(
            self.n_input, parts, lambda p: PartitionStore(self.root, p, keep), self.topic,
            clones, self.fresh_state, self.instance)
        info = self.merged_store.write(
            clones, history=merge_histories(got.histories, self.settings.history_items),
            offsets={self.topic: got.offsets}, events_total=got.events_total,
            watermark=got.watermark, metrics=self._merged_metrics(),
            extra_meta={"scale_out": {
                "group": self.settings.group, "writer": self.instance,
                "partitions": got.partitions,
                "item_coverage": {str(p): n for p, n in sorted(self.fold.coverage.items())},
                "writer_update_lag_records": self.update_lag,
                "writer_partitions": sorted(parts),
                "updates": {self.updates: {str(p): o for p, o in self.fold.offsets.items()}},
            }})
        log.info("merged snapshot %d: events_total=%d over %d partitions in %.2f s",
                 info.version, got.events_total, len(got.partitions),
                 time.perf_counter() - t0)
        return info.version
