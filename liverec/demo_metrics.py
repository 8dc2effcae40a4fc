"""Reading the trainer's and the server's ``/metrics`` pages, as the demo does.

:func:`scrape` fetches and parses one page into a :class:`Scrape` (samples by name,
labels kept); :func:`_all_taken` tells from the trainer's page whether it has taken
every event the demo sent.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "scrape"]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("liverec.demo")


@dataclass
class Scrape:
    """Samples of one ``/metrics`` page, by sample name (``_total`` etc. included).

    Examples
    --------
    >>> s = Scrape.parse('a_total{model="x"} 2.0\\na_total{model="y"} 3.0\\n')
    >>> s.sum("a_total"), s.get("a_total", model="y"), s.get("missing")
    (5.0, 3.0, None)
    """

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name].append((dict(sample.labels), float(sample.value)))
        return cls(dict(out))

    def _matching(self, name: str, labels: Mapping[str, str]) -> list[float]:
        return [v for lab, v in self.samples.get(name, [])
                if all(lab.get(k) == want for k, want in labels.items())]

    def get(self, name: str, **labels: str) -> float | None:
        """The first sample matching ``labels``, or ``None``."""
        values = self._matching(name, labels)
        return values[0] if values else None

    def sum(self, name: str, **labels: str) -> float:
        """Sum over the samples matching ``labels`` (0 when there are none)."""
        return float(sum(self._matching(name, labels)))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of one metric."""
        return {lab[label]: v for lab, v in self.samples.get(name, []) if label in lab}


def _all_taken(tr: Scrape, produced: int) -> bool:
    """Whether the trainer read all ``produced`` events and learned, dropped as
    duplicates or capped (the flood guard) every one it read: events never learned
    must not keep the demo waiting.

    >>> page = ("liverec_trainer_events_consumed_total 100\\n"
    ...         "liverec_trainer_events_learned_total 89\\n"
    ...         'liverec_trainer_events_capped_total{reason="repeat"} 11\\n')
    >>> _all_taken(Scrape.parse(page), 100), _all_taken(Scrape.parse(page), 101)
    (True, False)
    """
    s = tr.sum
    read = s("liverec_trainer_events_consumed_total") + s("liverec_trainer_events_rejected_total")
    done = (s("liverec_trainer_events_learned_total") + s("liverec_trainer_events_capped_total")
            + s("liverec_trainer_duplicates_dropped_total"))
    return read >= produced and done >= s("liverec_trainer_events_consumed_total")


def scrape(url: str, timeout_s: float = 2.0) -> Scrape | None:
    """Read and parse a ``/metrics`` URL; ``None`` when it does not answer."""
    try:
        resp = httpx.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return Scrape.parse(resp.text)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("scrape %s failed: %s", url, exc)
        return None
