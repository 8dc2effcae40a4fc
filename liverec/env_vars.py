"""The ``LIVEREC_*`` environment variables liverec reads, and a warning for the others.

pydantic-settings ignores a variable no field reads (``extra="ignore"``), so a typo --
``LIVEREC_KAFKA_BOOTSTRAPS`` -- leaves its setting at the default without a word: a
server started so ran without Kafka and said ready. :func:`warn_unknown` logs one
WARNING at start naming every ``LIVEREC_*`` variable that nothing reads, with the
closest known name. ``docs/SETTINGS.md`` lists the known ones (a test keeps the two
equal).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Mapping

from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

__all__ = ["env_names", "known_variables", "unknown_variables", "warn_unknown"]

#: every settings class (module:class), each field read from the environment
SETTINGS_CLASSES = (
    "stream.settings:KafkaSettings",
    "trainer.settings:TrainerSettings",
    "trainer.flood:FloodSettings",
    "serving.settings:ServeSettings",
    "serving.auth:AuthSettings",
    "serving.ratelimit:RateLimitSettings",
)
#: variables read outside the settings classes (docs/SETTINGS.md, "Other variables")
OTHER_VARIABLES = frozenset({
    "LIVEREC_UMASK", "LIVEREC_API_KEYS_FILE", "LIVEREC_CACHE_DIR", "LIVEREC_DOCKER",
    "LIVEREC_KAFKA_IMAGE", "LIVEREC_LOG_LEVEL", "LIVEREC_LOG_FORMAT",
})


#: variables of the container stack and the build scripts (docker-compose*.yml, the
#: Dockerfile, scripts/): not read by liverec, but often exported in the same shell
DEPLOY_VARIABLES = frozenset({
    "LIVEREC_BASE_IMAGE", "LIVEREC_BIND_ADDR", "LIVEREC_DOCKERD_LOG",
    "LIVEREC_DOCKER_DATA_ROOT", "LIVEREC_GRAFANA_IMAGE", "LIVEREC_GRAFANA_PORT",
    "LIVEREC_IMAGE", "LIVEREC_KAFKA_HEAP_OPTS", "LIVEREC_KAFKA_HOST", "LIVEREC_KAFKA_PORT",
    "LIVEREC_LOCAL_BASE_TAG", "LIVEREC_LOCAL_KAFKA_TAG", "LIVEREC_LOCAL_PROMETHEUS_TAG",
    "LIVEREC_PROMETHEUS_IMAGE", "LIVEREC_PROMETHEUS_PORT", "LIVEREC_REBUILD_BASE",
    "LIVEREC_REPLAY_DATA", "LIVEREC_SERVING_PORTS", "LIVEREC_TAG",
    "LIVEREC_TRAINER_METRICS_PORT",
})


def env_names(cls: type[BaseSettings], name: str) -> list[str]:
    """The environment variables pydantic-settings reads field ``name`` of ``cls`` from,
    the one it prefers first."""
    config = cls.model_config
    prefix = config.get("env_prefix", "") or ""
    info = cls.model_fields[name]
    alias = info.validation_alias
    names: list[str] = []
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str):
                names.append(choice)
            elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                names.append(choice.path[0])
    elif isinstance(alias, AliasPath) and isinstance(alias.path[0], str):
        names.append(alias.path[0])
    elif isinstance(alias, str):
        names.append(alias)
    if not names or config.get("populate_by_name") or config.get("validate_by_name"):
        names.append(prefix + name)
    if not config.get("case_sensitive", False):
        names = [n.upper() for n in names]
    return list(dict.fromkeys(names))


def known_variables() -> set[str]:
    """Every ``LIVEREC_*`` variable some part of liverec reads."""
    known = set(OTHER_VARIABLES)
    for spec in SETTINGS_CLASSES:
        module, _, name = spec.partition(":")
        cls = getattr(importlib.import_module(module), name)
        for field in cls.model_fields:
            known.update(n for n in env_names(cls, field) if n.startswith("LIVEREC_"))
    return known


def unknown_variables(environ: Mapping[str, str] | None = None,
                      known: set[str] | None = None) -> list[str]:
    """The ``LIVEREC_*`` variables of ``environ`` (default: this process's) that
    nothing reads (``known``: :func:`known_variables`, when the caller has it), sorted."""
    env = os.environ if environ is None else environ
    ok = (known_variables() if known is None else known) | DEPLOY_VARIABLES
    return sorted(k for k in env if k.upper().startswith("LIVEREC_") and k.upper() not in ok)


def warn_unknown(log: logging.Logger, environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one WARNING naming the unread ``LIVEREC_*`` variables (with the closest known
    name each); returns them."""
    known = known_variables()
    unknown = unknown_variables(environ, known)
    if unknown:
        names = sorted(known)
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.75)
            parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
        log.warning("ignoring environment variables that no setting reads: %s "
                    "(docs/SETTINGS.md lists liverec's; README's \"Production shape\" "
                    "the container stack's)", ", ".join(parts))
    return unknown
