"""Online recommendation models that learn per mini-batch.

This package is the learning core of liverec. It imports no Kafka client, no web
framework and no Prometheus code, so it can be tested and benchmarked alone.
"""

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory

__all__ = ["Batch", "IdIndex", "ModelState", "OnlineModel", "UserHistory"]
