"""The trainer application: composes :mod:`stream` (Kafka in) and :mod:`online_models`.

* :mod:`trainer.service` -- the service loop (:class:`Trainer`); its parts:
  :mod:`trainer.persistence` (restore, snapshot, commit), :mod:`trainer.membership`
  (the source, its consumer, the rebalance hooks), :mod:`trainer.status` (gauges, the
  status line);
* :mod:`trainer.source` -- the polling/decoding thread ahead of learning;
* :mod:`trainer.checkpoint` -- snapshot capture, background writes, restore;
* :mod:`trainer.adaptation` -- drift adaptation of declared hyperparameters;
* :mod:`trainer.dedup` -- the durable de-duplication window;
* :mod:`trainer.metrics` -- every ``liverec_trainer_*`` metric;
* :mod:`trainer.settings` -- :class:`TrainerSettings`;
* :mod:`trainer.partitioned` -- scale-out mode (``--scale-out``): N trainers, one model,
  item updates through ``<topic>.updates`` in Kafka transactions; its parts:
  :mod:`trainer.user_side` (the owned partitions), :mod:`trainer.poll_learning`
  (learning a poll), :mod:`trainer.transactions`, :mod:`trainer.item_side` (folding,
  evaluation, merging), :mod:`trainer.folding` and :mod:`trainer.merged`;
* :mod:`trainer.partition_state` -- per-partition user state and its snapshots.
"""

from trainer.dedup import DedupWindow
from trainer.service import Trainer, TrainerResult
from trainer.settings import TrainerSettings

__all__ = ["DedupWindow", "Trainer", "TrainerResult", "TrainerSettings"]
