"""Settings of ``liverec train`` (the Kafka side: :class:`stream.settings.KafkaSettings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from online_models import registry

__all__ = ["TrainerSettings"]


class TrainerSettings(BaseSettings):
    """What the trainer does with the stream (every field also from ``LIVEREC_<FIELD>``).

    Where the stream comes from (bootstrap, topic, client, security, event limits and
    weights) is one :class:`stream.settings.KafkaSettings`, passed beside this object.

    Examples
    --------
    >>> s = TrainerSettings(models="popularity,itemknn")
    >>> s.model_names(), s.batch_size, s.drift_adapt, s.eval_sample
    (['popularity', 'itemknn'], 256, True, 1.0)
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_", extra="ignore")

    #: Kafka consumer group; one group learns one model (with ``scale_out``, its trainers
    #: share it); a snapshot location belongs to one group
    group: str = "liverec-trainer"
    #: snapshot root this trainer writes (its only writer) and ``liverec serve`` reads
    snapshots: Path = Path("snapshots")
    #: models to learn: "all" (the registry's default mix) or comma-separated registry
    #: names
    models: str = "all"
    #: JSON ``{"model": {"param": value}}`` passed to fresh models' constructors
    model_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: models another trainer learns, by name -> its snapshot root (``"seqnn=./snaps"``,
    #: comma-separated from the environment): this trainer evaluates them, its hybrid and
    #: re-ranker blend them and its snapshots carry them, but it never learns them; each
    #: is reloaded from its root's ``LATEST`` (checked every ``follow_every_s``)
    follow: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict)
    #: seconds between two checks of the followed roots' ``LATEST``
    follow_every_s: float = Field(default=5.0, gt=0)
    #: events per mini-batch: each model learns once per batch
    batch_size: int = Field(default=256, ge=1)
    #: longest a batch waits to fill up to ``batch_size`` (it is handed over early once
    #: a 50 ms poll slice brings nothing: the stream went quiet)
    max_wait_ms: int = Field(default=200, ge=0)
    #: decoded batches polled ahead of learning (poll and decode overlap learning)
    prefetch_batches: int = Field(default=4, ge=1)
    #: who polls and decodes: a thread of this process, or a child process (client
    #: confluent only; the group membership, commits and dead-letter topic stay here);
    #: "auto" is the process with confluent, the thread with kafka-python
    source: Literal["auto", "thread", "process"] = "auto"
    #: seconds between two snapshots (spaced out by ``snapshot_max_share`` and
    #: ``snapshot_write_share`` when a copy or a write takes long)
    snapshot_every_s: float = Field(default=1.0, gt=0)
    #: most of the learner's wall time copying state for snapshots may take while it
    #: has a backlog: when a copy takes longer than this share of ``snapshot_every_s``,
    #: snapshots space out (0: always every ``snapshot_every_s``). While the learner
    #: keeps up, copies may also take half of the time it waited for records
    #: (:data:`trainer.service.IDLE_COPY_FRACTION`), which learning did not need.
    snapshot_max_share: float = Field(default=0.025, ge=0, le=1)
    #: most of the wall time the background thread may spend writing snapshots (hash,
    #: fsync): when a write takes longer than this share of ``snapshot_every_s``,
    #: snapshots space out (0: always every ``snapshot_every_s``). On a small machine
    #: a writer busy all the time takes a core from the learner and the Kafka source.
    snapshot_write_share: float = Field(default=0.25, ge=0, le=1)
    #: snapshot versions kept on disk (older ones are deleted)
    keep_snapshots: int = Field(default=5, ge=1)
    #: what a trainer that finds no valid snapshot does when its consumer group has
    #: committed offsets on the topic (the model they stand for is lost): "refuse"
    #: stops it with what to do; "resume" starts there with an empty model and a
    #: warning (the events before the commits are not learned again). A scale-out
    #: trainer decides per assigned partition: one the group committed with no valid
    #: state in the directory; "resume" re-learns what the topics still hold of it
    on_missing_snapshot: Literal["refuse", "resume"] = "refuse"
    #: seconds between two comparisons of the factor models' item embeddings
    #: (``liverec_trainer_embedding_drift_cosine_distance``), made at the first durable
    #: snapshot this long after the last one (0: at every durable snapshot). A fixed
    #: interval keeps the figure comparable while the snapshot cadence changes with
    #: load; each comparison copies every embedding table on the learner's thread.
    embedding_drift_every_s: float = Field(default=30.0, ge=0)
    #: port of the trainer's Prometheus ``/metrics``: 0 picks a free port (logged); -1
    #: serves no metrics
    metrics_port: int = Field(default=9101, ge=-1)
    #: the metrics endpoint's address: loopback unless set (the compose files set
    #: 0.0.0.0 inside the stack's network, for Prometheus)
    metrics_addr: str = "127.0.0.1"
    #: cut-off of the prequential metrics (HR@k, NDCG@k, ...) and length of the lists
    #: scored
    k: int = Field(default=10, ge=1)
    #: evaluated events in the rolling metrics (``liverec_trainer_rolling_*``)
    rolling_window: int = Field(default=1000, ge=1)
    #: prequential evaluation sample: a fraction of the evaluable events in (0, 1] ...
    eval_sample: float = Field(default=1.0, gt=0, le=1)
    #: ... scored at most this many per second (0: governed by ``eval_cpu_share``)
    eval_budget_per_s: float = Field(default=0.0, ge=0)
    #: the governor's target: evaluation CPU time (the learner thread's: the bookkeeping
    #: every event needs plus scoring the sample) as a share of the trainer process's
    #: CPU time (0: no governor, every sampled event is scored). It starts at the floor
    #: below; until a whole second is measured it budgets from the part measured so
    #: far. On the issue-9 benchmark (BENCHMARKS.md,
    #: full speed, 20,000 items) the default mix's evaluation takes 5.1-5.4% of the
    #: process's CPU time and 6.1-6.3% of the learner's wall time; the bookkeeping
    #: every event needs takes 4-6% of it alone, so at full speed few events are
    #: scored beyond the first seconds (97 per model in a 9 s run) ...
    eval_cpu_share: float = Field(default=0.05, ge=0, le=1)
    #: ... but never fewer than this many scored events per minute (when there are),
    #: except while the learner has a backlog (then the share bounds it, down to
    #: ``trainer.evaluation.BACKLOG_MIN_PER_S``)
    eval_min_per_minute: float = Field(default=1000.0, ge=0)
    #: seed of the evaluation sample's draws (which events are scored)
    eval_seed: int = 0
    #: most recent distinct items kept per user: the models' query context and what
    #: evaluation excludes
    history_items: int = Field(default=200, ge=1)
    #: most users whose history is kept (None: no bound); beyond it the least recently
    #: active user is forgotten -- its history, its evaluation counts and its state in
    #: every model (``forget_users``) -- so memory and snapshots stay bounded however
    #: many user ids the stream brings
    history_max_users: int | None = Field(default=1_000_000, ge=1)
    #: an ``event_id`` learned is remembered until the watermark is this many seconds of
    #: event time past it: a duplicate within it is skipped, an older one learned again
    #: (size it to the longest replay overlap; the window is in every snapshot)
    dedup_window_s: float = Field(default=86_400.0, gt=0)
    #: ... and at most this many ids are remembered (the oldest go first)
    dedup_max_ids: int = Field(default=500_000, ge=1)
    #: after a model's concept-drift alarm, forget faster for a while: its half-lives
    #: times ``drift_half_life_factor`` and learning rates times ``drift_lr_factor``, for
    #: ``drift_adapt_events`` learned events, then the original values come back
    drift_adapt: bool = True
    #: ``drift_adapt``: factor on the adaptable half-lives (shorter memory)
    drift_half_life_factor: float = Field(default=0.25, gt=0)
    #: ``drift_adapt``: factor on the adaptable learning rates (faster steps)
    drift_lr_factor: float = Field(default=2.0, gt=0)
    #: ``drift_adapt``: learned events the adaptation lasts
    drift_adapt_events: int = Field(default=5_000, ge=1)
    #: data drift (item popularity, user activity: PSI and JS in the metrics): hash bins
    #: of the histograms compared
    drift_buckets: int = Field(default=64, ge=2)
    #: data drift: events per window; the latest window is compared with the one
    #: before it
    drift_window: int = Field(default=5_000, ge=10)
    #: seconds between two status lines in the log
    status_every_s: float = Field(default=5.0, gt=0)
    #: rebuild the consumer when it has held no partitions this long, since joining or
    #: since a rebalance took its last ones (doubling each time); guards against a
    #: group membership that never completes or was lost unnoticed
    join_timeout_s: float = Field(default=60.0, gt=0)
    #: group session timeout: how soon a crashed trainer's partitions are reassigned
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: scale-out mode: N trainers in one group share one model (:mod:`trainer.partitioned`)
    scale_out: bool = False
    #: this trainer's stable name in scale-out mode (its transactional id: a restart
    #: with the same name fences the old incarnation); default: the host name
    instance_id: str | None = None
    #: scale-out: seconds between merged (servable) snapshots by the last partition's owner
    merge_every_s: float = Field(default=5.0, gt=0)
    #: scale-out: seconds the folding trainer gathers update messages before it folds
    #: them into its item state in one go (0: after every read); fewer, larger folds
    #: cost the pair stores fewer merges; evaluation sees item state this much older
    fold_every_s: float = Field(default=0.5, ge=0)
    #: scale-out: the share of users whose events the evaluating trainer evaluates, by a
    #: CRC-32 of the id (the same users in every trainer and after restarts); the
    #: evaluator's bookkeeping of every event it sees cost the folding trainer, the
    #: scale-out bottleneck, a quarter of its speed when it saw them all
    eval_users: float = Field(default=0.1, gt=0, le=1)
    #: scale-out: seconds a transaction stays open over consecutive full polls before
    #: their updates, rejects and input offsets commit together (0: one transaction per
    #: poll; a poll that is not full, the trainer caught up, commits at once); like Kafka
    #: Streams' ``commit.interval.ms``, it trades how soon the update topic shows learned
    #: events (and how much a crash re-learns) for fewer transactions under a backlog,
    #: each of which costs the broker markers on every partition it touched
    commit_every_s: float = Field(default=0.5, ge=0)
    #: scale-out: the broker aborts a silent trainer's open transaction after this
    transaction_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: stop after this many events learned by this process
    max_events: int | None = Field(default=None, ge=1)
    #: stop once ``events_total`` (across restarts) reaches this (a single trainer)
    until_events_total: int | None = Field(default=None, ge=1)
    #: stop after this many seconds
    max_seconds: float | None = Field(default=None, gt=0)
    #: stop after this many seconds without records while holding partitions
    idle_exit_s: float | None = Field(default=None, gt=0)

    #: item content file for the models that use it (MovieLens ``movies.csv``, the
    #: Online Retail CSV, or a CSV with ``item_id`` and ``text`` columns), read through
    #: ``item_features_preset`` (None: from the header)
    item_features: Path | None = None
    #: ``movielens``, ``online-retail`` or ``text``: how ``item_features`` is read
    #: (None: from its header)
    item_features_preset: str | None = None
    #: compacted item-features topic to read from its beginning ("": none), e.g.
    #: ``clicks.item_features`` (what ``liverec features publish`` writes)
    item_features_topic: str = ""

    @model_validator(mode="after")
    def _commit_within_timeout(self) -> TrainerSettings:
        if self.commit_every_s * 1000 > self.transaction_timeout_ms / 2:
            raise ValueError(
                f"commit_every_s={self.commit_every_s} keeps a transaction open longer than "
                f"half of transaction_timeout_ms={self.transaction_timeout_ms}: the broker "
                "would abort it under load; lower it or raise the timeout")
        return self

    @field_validator("follow", mode="before")
    @classmethod
    def _parse_follow(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p for p in v.split(",") if p.strip()]
        if isinstance(v, list | tuple):
            pairs = {}
            for spec in v:
                name, sep, root = str(spec).partition("=")
                if not sep or not name.strip() or not root.strip():
                    raise ValueError(f"--follow takes MODEL=SNAPSHOT_DIR, not {spec!r}")
                pairs[name.strip()] = Path(root.strip())
            return pairs
        return v

    def model_names(self) -> list[str]:
        """``models``, then the followed models it does not name."""
        names = registry.parse_models(self.models)
        extra = [n for n in self.follow if n not in names]
        return names + registry.parse_models(",".join(extra)) if extra else names
